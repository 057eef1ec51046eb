//! One client connection: submits go to the pool, answers come back through
//! a batched writer. The reader holds one permit per job in flight, so a
//! client that submits without reading answers is simply not read from
//! (backpressure), instead of making the master buffer without bound.

use crate::flow::wait_open;
use crate::job::{
    backlog_bytes, Ack, Answer, Backlog, ConnReply, Op, Outbox, Outgoing, Reply, Submission,
};
use crate::pool::PoolHandle;
use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use taskmaster_proto::codec::{self, FrameReader};
use taskmaster_proto::messages::{ClientHello, ToClient, ToMaster, PROTOCOL_VERSION};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

/// Events waiting to be written to one subscriber before more are dropped.
const EVENT_BACKLOG: usize = 4096;
/// Longest `wait` a `Result` request may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);
/// Most jobs one `Jobs` request lists.
pub const MAX_LIST: usize = 10_000;

/// What a client session needs to know.
pub struct SessionConfig {
    /// Largest payload in a frame.
    pub max_payload: usize,
    /// The client token, when clients must present one.
    pub token: Option<crate::config::Token>,
    /// Jobs one client connection may have in flight.
    pub max_in_flight: usize,
    /// Unsent bytes past which a client connection is closed.
    pub max_client_backlog: usize,
    /// Unsent bytes past which the children writing for a client wait.
    pub client_window: usize,
    /// Unsent bytes of all clients together.
    pub total: Arc<crate::flow::Total>,
    /// How long an idle client connection is kept.
    pub client_idle: Option<Duration>,
}

/// Serves one client until it closes; in-flight jobs still get answered
/// after a half-close.
pub async fn serve(
    mut reader: FrameReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
    hello: ClientHello,
    peer: SocketAddr,
    pool: PoolHandle,
    cfg: &SessionConfig,
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    // The connection's place under `--max-connections` is held until its
    // writer is done, that is until every answer owed has gone out.
    let refused_full = slot.is_none();
    let max_payload = cfg.max_payload;
    let (backlog, mut over) =
        Backlog::new(cfg.client_window, cfg.max_client_backlog, cfg.total.clone());
    let unsent = backlog.clone();
    let mut writer_over = over.clone();
    let (tx, writer) = Outbox::new(write);
    let writer = tokio::spawn(async move {
        let _slot = slot;
        let encode = |out: Outgoing, buf: &mut BytesMut| {
            unsent.sub(out.counted);
            codec::encode(&out.msg, buf)
        };
        // What flow control could not hold back grew past the last
        // resort: drop the connection rather than buffer without bound.
        let over = async {
            let _ = writer_over.wait_for(|over| *over).await;
        };
        if let Err(e) = writer.run(encode, over).await {
            debug!(%peer, error = %e, "client connection write failed");
        }
        // Nothing it still holds will be written: children and operations
        // waiting for this client go on.
        unsent.close();
    });
    // Dropped when the read loop ends: event forwarders stop with it, so
    // the writer (and the connection's place) goes once answers owed are
    // written.
    let (reading, _) = tokio::sync::watch::channel(());
    let say = |msg| {
        tx.send(Outgoing {
            msg,
            permit: None,
            counted: 0,
        });
    };
    let refusal = if refused_full {
        Some("too many connections (--max-connections)".to_owned())
    } else if hello.version != PROTOCOL_VERSION {
        warn!(%peer, version = hello.version, "client speaks another protocol version");
        Some(format!(
            "protocol version {} not supported (master speaks {PROTOCOL_VERSION})",
            hello.version
        ))
    } else if let Some(token) = &cfg.token {
        let good = hello.token.as_deref().is_some_and(|t| token.matches(t));
        if !good {
            warn!(%peer, token_given = hello.token.is_some(), "client refused: bad or missing client token");
        }
        (!good).then(|| "bad or missing client token".to_owned())
    } else {
        None
    };
    if let Some(message) = refusal {
        say(ToClient::Refused { message });
        drop(tx);
        let _ = writer.await;
        return;
    }
    say(ToClient::Welcome {
        version: PROTOCOL_VERSION,
        max_payload: max_payload as u64,
        instance: pool.instance().to_owned(),
    });
    let max_in_flight = cfg.max_in_flight;
    let permits = Arc::new(Semaphore::new(max_in_flight));
    // One timer for the connection, re-armed only when it fires: a timer
    // per frame would cost the hot path.
    let idle_timer = tokio::time::sleep(cfg.client_idle.unwrap_or(Duration::from_secs(86_400)));
    tokio::pin!(idle_timer);
    // One future for the connection's life: a fresh one per frame would
    // register a waker per frame on the hot path.
    let over_now = over.clone();
    let client_over = over.wait_for(|over| *over);
    tokio::pin!(client_over);
    // Both are polled only after their own wake-ups (`wake::Gate`), not
    // on each of the reader's.
    let (over_watch, idle_watch) = (crate::wake::Gate::default(), crate::wake::Gate::default());
    let mut received: u64 = 0;
    // (frames in, frames out) when the idle timer last fired; the Welcome
    // is the first frame out.
    let mut seen = (0u64, 1u64);
    // Submits one read brought, handed to the pool together before the
    // loop waits again (or before anything that must follow them).
    let mut pending: Vec<Submission> = Vec::new();
    loop {
        // A client that does not read its answers gets no more requests
        // read (flow control by bytes, as --max-in-flight is by count).
        let blocked = backlog.blocked();
        // The rest of what one read brought is taken without a trip
        // through select! per frame (the checks that come first in it are
        // made here too).
        let buffered = (!(blocked || *over_now.borrow()))
            .then(|| codec::next_buffered::<ToMaster, _>(&mut reader))
            .flatten();
        let frame = if let Some(frame) = buffered {
            frame
        } else {
            submit_pending(&pool, &mut pending);
            tokio::select! {
                biased;
                _ = over_watch.run(client_over.as_mut()) => {
                    warn!(%peer, max_bytes = cfg.max_client_backlog, "client not reading its answers (--max-client-backlog); closing");
                    break;
                }
                () = wait_open(blocked.then(|| backlog.clone())), if blocked => continue,
                frame = codec::read_message::<ToMaster, _>(&mut reader), if !blocked => frame,
                // Reading a frame is cancel-safe (a partial one stays buffered
                // in the reader), so the idle check may interrupt it.
                () = idle_watch.run(idle_timer.as_mut()), if cfg.client_idle.is_some() => {
                    let idle = cfg.client_idle.unwrap_or_default();
                    // Only a connection with nothing in flight is idle: one
                    // waiting for long jobs is not.
                    let now_seen = (received, tx.written());
                    let quiet = permits.available_permits() == max_in_flight;
                    if quiet && now_seen == seen {
                        info!(%peer, "idle client connection closed (--client-idle-timeout)");
                        break;
                    }
                    seen = now_seen;
                    idle_timer.as_mut().reset(tokio::time::Instant::now() + idle);
                    continue;
                }
            }
        };
        received += 1;
        // A job operation or a subscription comes after the submits read
        // before it.
        if !matches!(frame, Ok(Some(ToMaster::Submit { .. }))) {
            submit_pending(&pool, &mut pending);
        }
        match frame {
            Ok(Some(ToMaster::Submit {
                tag,
                module,
                context,
                options,
                input,
            })) => {
                // The client knows both limits (Welcome, codec::MAX_CONTEXT):
                // a frame past them is a broken peer, like an oversized frame.
                if input.len() > max_payload || context.len() > codec::MAX_CONTEXT {
                    warn!(%peer, input = input.len(), context = context.len(), "submit over the size limits; closing");
                    break;
                }
                let permit = match permits.clone().try_acquire_owned() {
                    Ok(permit) => permit,
                    // At --max-in-flight: the submits held here must reach
                    // the pool, whose answers free the places.
                    Err(_) => {
                        submit_pending(&pool, &mut pending);
                        permits
                            .clone()
                            .acquire_owned()
                            .await
                            .expect("semaphore never closed")
                    }
                };
                let detach = options.detach || options.start_later;
                let (reply, ack) = if detach {
                    let ack = Ack::Conn {
                        tx: tx.clone(),
                        tag,
                        permit: Some(permit),
                    };
                    (Reply::Detached, Some(ack))
                } else {
                    let reply = Reply::Conn(ConnReply {
                        tx: tx.clone(),
                        tag,
                        context,
                        permit: Some(permit),
                        backlog: Some(backlog.clone()),
                    });
                    (reply, None)
                };
                pending.push(Submission {
                    module,
                    input,
                    options,
                    reply,
                    ack,
                    waiter: None,
                });
                if pending.len() >= SUBMIT_BATCH {
                    submit_pending(&pool, &mut pending);
                }
            }
            Ok(Some(
                msg @ (ToMaster::Status { .. }
                | ToMaster::Result { .. }
                | ToMaster::Start { .. }
                | ToMaster::Cancel { .. }
                | ToMaster::Jobs { .. }),
            )) => {
                let permit = permits
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("semaphore never closed");
                let (pool, tx, backlog) = (pool.clone(), tx.clone(), backlog.clone());
                // Its own task: a `Result` may wait long, and the connection
                // keeps serving its other jobs meanwhile.
                tokio::spawn(async move {
                    let (tag, answer) = job_op(&pool, msg).await;
                    if let Some(answer) = answer {
                        // A client not reading gets no more answers queued
                        // (a result may be large) until it reads.
                        backlog.opened().await;
                        let msg = answer.into_frame(tag);
                        let counted = backlog_bytes(&msg);
                        backlog.add(counted);
                        tx.send(Outgoing {
                            msg,
                            permit: Some(permit),
                            counted,
                        });
                    }
                });
            }
            Ok(Some(ToMaster::Events { tag, job })) => {
                // A subscription is work in flight: a quiet one is not an
                // idle connection, whatever the event rate.
                let subscribed = permits
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("semaphore never closed");
                let mut events = pool.subscribe();
                let tx = tx.clone();
                let mut reading = reading.subscribe();
                // Events waiting to be written to this client are bounded:
                // one that does not read loses events, not master memory.
                let backlog = Arc::new(Semaphore::new(EVENT_BACKLOG));
                tokio::spawn(async move {
                    let _subscribed = subscribed;
                    loop {
                        let next = tokio::select! {
                            next = events.recv() => next,
                            _ = reading.changed() => return,
                        };
                        let event = match next {
                            Ok(e) => e,
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                                debug!(%peer, missed = n, "event subscriber fell behind");
                                continue;
                            }
                            Err(_) => return,
                        };
                        if !job.is_empty() && event.job.as_deref() != Some(job.as_str()) {
                            continue;
                        }
                        let Ok(permit) = backlog.clone().try_acquire_owned() else {
                            debug!(%peer, "event subscriber not reading; event dropped");
                            continue;
                        };
                        let msg = ToClient::Event {
                            tag,
                            name: event.name.to_owned(),
                            json: event.json(),
                        };
                        if !tx.send(Outgoing {
                            msg,
                            permit: Some(permit),
                            counted: 0,
                        }) {
                            return;
                        }
                    }
                });
            }
            Ok(Some(ToMaster::Stats { tag })) => {
                let Some(stats) = pool.stats().await else {
                    break;
                };
                let json = serde_json::to_string(&stats).expect("stats serialize");
                say(ToClient::Stats { tag, json });
            }
            Ok(None) => {
                debug!(%peer, "client closed");
                break;
            }
            Err(e) => {
                warn!(%peer, error = %e, "bad frame from client; closing");
                break;
            }
        }
    }
    submit_pending(&pool, &mut pending);
}

/// Most submits held before they go to the pool.
const SUBMIT_BATCH: usize = 64;

/// Hands the held submits to the pool: one alone as it is (no
/// allocation), more in one message.
fn submit_pending(pool: &PoolHandle, pending: &mut Vec<Submission>) {
    match pending.len() {
        0 => {}
        1 => pool.submit(pending.pop().expect("one submit")),
        _ => pool.submit_many(std::mem::take(pending)),
    }
}

/// Runs one job operation from the socket; the answer is `None` if the pool
/// has stopped.
async fn job_op(pool: &PoolHandle, msg: ToMaster) -> (u64, Option<Answer>) {
    let by_id = |tag: u64, id: &str, op: fn(u64) -> Op| match pool.parse_id(id) {
        Ok(job) => (tag, Ok(op(job))),
        Err(answer) => (tag, Err(*answer)),
    };
    // With --nats, a job another master took: its outcome from the bucket.
    if let ToMaster::Status { tag, id } | ToMaster::Result { tag, id, .. } = &msg {
        if pool.parse_id(id).is_err() {
            let result = matches!(msg, ToMaster::Result { .. });
            if let Some(answer) = pool.shared_outcome(id, result).await {
                return (*tag, Some(answer));
            }
        }
    }
    let (tag, op) = match msg {
        ToMaster::Status { tag, id } => by_id(tag, &id, Op::Status),
        ToMaster::Start { tag, id } => by_id(tag, &id, Op::Start),
        ToMaster::Cancel { tag, id } => by_id(tag, &id, Op::Cancel),
        ToMaster::Result { tag, id, wait_ms } => {
            let wait = Duration::from_millis(wait_ms);
            if wait > MAX_WAIT {
                let msg = format!(
                    "wait of {wait_ms} ms is over the limit of {} s",
                    MAX_WAIT.as_secs()
                );
                return (tag, Some(Answer::invalid(msg)));
            }
            return match pool.parse_id(&id) {
                Ok(job) => (tag, pool.result(job, wait).await),
                Err(answer) => (tag, Some(*answer)),
            };
        }
        ToMaster::Jobs { tag, limit, status } => {
            let status =
                match status.as_str() {
                    "" => Ok(None),
                    word => word.parse().map(Some).map_err(
                        |e: taskmaster_proto::jobs::UnknownStatus| Answer::invalid(e.to_string()),
                    ),
                };
            let limit = limit as usize;
            if !(1..=MAX_LIST).contains(&limit) {
                let msg = format!("limit {limit}: expected 1 to {MAX_LIST}");
                return (tag, Some(Answer::invalid(msg)));
            }
            (tag, status.map(|status| Op::List { limit, status }))
        }
        ToMaster::Submit { tag, .. } | ToMaster::Stats { tag } | ToMaster::Events { tag, .. } => {
            (tag, Err(Answer::invalid("not a job operation".into())))
        }
    };
    match op {
        Ok(op) => (tag, pool.op(op).await),
        Err(answer) => (tag, Some(answer)),
    }
}
