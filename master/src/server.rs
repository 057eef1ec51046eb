//! Wires a running master together: listener, HTTP API, pool, metrics,
//! signals; returns when a shutdown has stopped every child.

use crate::child::ProcessLauncher;
use crate::config::{self, Config};
use crate::listener::{self, ListenerConfig};
use crate::metrics::Metrics;
use crate::pool;
use std::sync::Arc;
use tracing::info;

/// A fresh job-id prefix for this master run: 48 random bits, so ids do
/// not repeat across restarts.
pub fn fresh_instance() -> String {
    let random = crate::child::fresh_secret();
    random[..taskmaster_proto::jobs::INSTANCE_LEN / 2]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The master's bound sockets.
pub struct Listeners {
    /// Children and clients.
    pub main: std::net::TcpListener,
    /// The HTTP API (`--http`).
    pub http: Option<std::net::TcpListener>,
    /// Agents (`--agent-listen`), with TLS if configured.
    pub agents: Option<(std::net::TcpListener, Option<tokio_rustls::TlsAcceptor>)>,
}

/// Runs the master on already-bound listeners until it is stopped;
/// `notify` tells systemd how it goes (`NOTIFY_SOCKET`).
pub async fn run(
    cfg: Config,
    Listeners {
        main: listener,
        http,
        agents,
    }: Listeners,
    store: Option<crate::store::Opened>,
    notify: Option<crate::notify::Notifier>,
    nats: Option<crate::nats::Opened>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let local = listener.local_addr()?;
    info!(addr = %local, "listening");
    let http = match http {
        Some(l) => {
            let l = tokio::net::TcpListener::from_std(l)?;
            info!(addr = %l.local_addr()?, "HTTP API listening");
            Some(l)
        }
        None => None,
    };
    let agents = match agents {
        Some((l, tls)) => {
            let l = tokio::net::TcpListener::from_std(l)?;
            info!(addr = %l.local_addr()?, tls = tls.is_some(), "agents listening");
            Some((l, tls))
        }
        None => None,
    };
    let (uid, gid) = config::resolve_ids(&cfg).map_err(std::io::Error::other)?;
    let store = store.map(crate::store::Opened::start);
    // A store keeps its job-id prefix: old ids still resolve, none repeats.
    let instance: Arc<str> = match &store {
        Some((_, recovered)) => recovered.instance.as_str().into(),
        None => fresh_instance().into(),
    };
    let launcher = ProcessLauncher {
        handler: cfg.handler.clone(),
        connect: config::connect_back(local),
        max_payload: cfg.max_payload,
        uid,
        gid,
        nofile: cfg.child_nofile,
        core: (!cfg.child_core_dumps).then_some(0),
        heartbeat: cfg.heartbeat,
        exec: cfg.exec_dir.clone().map(|dir| (dir, instance.clone())),
        committed: store.as_ref().map(|(s, _)| s.committed()),
    };
    let listener_cfg = Arc::new(ListenerConfig {
        session: crate::session::SessionConfig {
            max_payload: cfg.max_payload,
            token: cfg.token.clone(),
            max_in_flight: cfg.max_in_flight,
            max_client_backlog: cfg.max_client_backlog,
            client_window: cfg.client_window,
            total: crate::flow::Total::new(cfg.max_total_backlog),
            client_idle: cfg.client_idle_timeout,
        },
        connections: Arc::new(tokio::sync::Semaphore::new(cfg.max_connections)),
        handshakes: listener::Handshakes::new(cfg.max_handshakes),
    });
    let token = cfg.token.clone();
    let agents = agents.map(|(l, tls)| {
        let cfg = crate::agents::AgentsConfig {
            token: cfg.token.clone(),
            tls,
            max_payload: cfg.max_payload,
            child_heartbeat: cfg.heartbeat,
            instance: instance.clone(),
            committed: launcher.committed.clone(),
        };
        (l, Arc::new(cfg))
    });
    let metrics = Arc::new(Metrics::new());
    crate::child::open_random()?;
    let max_payload = cfg.max_payload;
    let (nats, runner) = match nats {
        Some(opened) => {
            let (side, outcomes, runner) = crate::nats::prepare(opened, &instance)
                .await
                .map_err(std::io::Error::other)?;
            (Some((side, outcomes)), Some(runner))
        }
        None => (None, None),
    };
    let (pool, done) = pool::start(
        Arc::new(cfg),
        Arc::new(launcher),
        metrics.clone(),
        instance,
        store,
        nats,
    );
    if let Some(runner) = runner {
        tokio::spawn(runner.run());
    }
    // Subscribed here, before this task first yields and so before the
    // pool actor runs: its `pool-ready` cannot come and go unseen.
    let notify = notify.map(|n| {
        let n = Arc::new(n);
        tokio::spawn(crate::notify::run(
            n.clone(),
            pool.clone(),
            pool.subscribe(),
        ));
        n
    });
    if let Some(http) = http {
        let app = crate::http::router(pool.clone(), metrics, max_payload, token);
        let connections = listener_cfg.connections.clone();
        tokio::spawn(crate::http::serve(http, app, connections));
    }
    let signals = crate::signals::forward(pool.clone());
    tokio::spawn(listener::accept_loop(listener, pool.clone(), listener_cfg));
    if let Some((l, agents_cfg)) = agents {
        tokio::spawn(crate::agents::accept_loop(l, pool.clone(), agents_cfg));
    }
    tokio::select! {
        r = signals => r?,
        r = done => r.map_err(|_| std::io::Error::other("the pool stopped unexpectedly"))?,
    }
    // Said already at the signal; this covers any other way to the end.
    if let Some(n) = &notify {
        n.stopping();
    }
    info!("shutdown complete");
    Ok(())
}
