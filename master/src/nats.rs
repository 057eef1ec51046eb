//! `--nats URL` (SPEC section 15): masters share one queue, a JetStream
//! work-queue stream, instead of each keeping its own.
//!
//! - A submit to this master is published to the stream (`NAME.jobs`, the
//!   job id as `Nats-Msg-Id`, the module and where answers go in headers);
//!   the stream's message limit is `--job-max` with discard-new, so a
//!   refused publish is `overload`.
//! - A fetcher pulls from one durable consumer shared by every master only
//!   as many messages as this master has free children (never a
//!   prefetching subscription). Each becomes a local job whose answers
//!   ([`NatsReply`]) go back to the submitting master's answer subject
//!   (`NAME.answers.INSTANCE`, core NATS), then into the outcome stream
//!   `NAME-outcomes` (one message per job, subject `NAME.outcomes.ID`, kept
//!   for `--result-ttl`; a key-value bucket in all but name, made by hand
//!   because the key-value API of the client needs a newer server than
//!   Debian's 2.9), so `status` and `result` work from any master; only
//!   then is the message acked. While it runs, progress acks keep the
//!   server from giving it to another master.
//! - A message delivered a second time was fetched by a master that died
//!   (or stalled past the ack wait): it is answered `error` and terminated,
//!   never run again.
//!
//! The pool actor owns the jobs as always; this task owns the NATS side:
//! publishes, fetched messages, their acks, the answer subscription.

use crate::job::JobId;
use crate::pool::{PoolCmd, PoolHandle};
use async_nats::jetstream::{self, consumer::pull, stream, AckKind};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::time::Duration;
use taskmaster_proto::jobs::{JobStatus, JobView};
use taskmaster_proto::Reason;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

/// How long connecting and setting up the stream may take at start.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a fetch waits for messages before asking again.
const FETCH_EXPIRES: Duration = Duration::from_secs(1);

const H_ID: &str = "TM-Id";
const H_JOB: &str = "TM-Job";
const H_MODULE: &str = "TM-Module";
const H_REPLY: &str = "TM-Reply";
const H_TIMEOUT: &str = "TM-Timeout-Ms";
const H_KIND: &str = "TM-Kind";
const H_REASON: &str = "TM-Reason";

/// The `--nats` settings.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// The server (`nats://HOST:4222`).
    pub url: String,
    /// The stream's name (and the prefix of its subjects and bucket).
    pub stream: String,
    /// How long a fetched job may go without a progress ack before the
    /// server gives it to another master (which answers it `error`).
    pub ack_wait: Duration,
}

/// Why `--nats` cannot start.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// Not reachable, or no JetStream there.
    #[error("--nats {url}: {why}")]
    Unreachable {
        /// The URL.
        url: String,
        /// What failed.
        why: String,
    },
    /// A bad stream name.
    #[error("--nats-stream {0:?}: use letters, digits, '-' and '_' only")]
    StreamName(String),
}

/// The NATS side, connected and set up; [`start`] runs it.
pub struct Opened {
    cfg: NatsConfig,
    /// `--job-max` and `--result-ttl`, to make the streams again.
    limits: (usize, Duration),
    client: async_nats::Client,
    js: jetstream::Context,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    outcomes: stream::Stream,
}

/// Connects, and makes (or finds) the stream, its consumer and the
/// outcome bucket. `job_max` is the stream's message limit; `ttl` how long
/// outcomes are kept.
pub async fn open(cfg: NatsConfig, job_max: usize, ttl: Duration) -> Result<Opened, NatsError> {
    if cfg.stream.is_empty()
        || !cfg
            .stream
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(NatsError::StreamName(cfg.stream));
    }
    let err = |why: String| NatsError::Unreachable {
        url: cfg.url.clone(),
        why,
    };
    let setup = async {
        let client = async_nats::ConnectOptions::new()
            .name("taskmaster")
            .retry_on_initial_connect()
            .connect(cfg.url.as_str())
            .await
            .map_err(|e| e.to_string())?;
        client.flush().await.map_err(|e| e.to_string())?;
        let js = jetstream::new(client.clone());
        let (consumer, outcomes) = streams(&js, &cfg, job_max, ttl).await?;
        Ok::<_, String>((client, js, consumer, outcomes))
    };
    let (client, js, consumer, outcomes) = tokio::time::timeout(OPEN_TIMEOUT, setup)
        .await
        .map_err(|_| err(format!("no answer within {OPEN_TIMEOUT:?}")))?
        .map_err(err)?;
    Ok(Opened {
        cfg,
        limits: (job_max, ttl),
        client,
        js,
        consumer,
        outcomes,
    })
}

/// Makes (or finds, updating its limits) the job stream, its consumer and
/// the outcome stream. Also run again when the server has lost them (a
/// NATS restarted without its store).
async fn streams(
    js: &jetstream::Context,
    cfg: &NatsConfig,
    job_max: usize,
    ttl: Duration,
) -> Result<(jetstream::consumer::Consumer<pull::Config>, stream::Stream), String> {
    let config = stream::Config {
        name: cfg.stream.clone(),
        subjects: vec![format!("{}.jobs", cfg.stream)],
        retention: stream::RetentionPolicy::WorkQueue,
        max_messages: i64::try_from(job_max).unwrap_or(i64::MAX),
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    };
    js.create_or_update_stream(config)
        .await
        .map_err(|e| format!("stream {}: {e}", cfg.stream))?;
    let stream = js
        .get_stream(cfg.stream.as_str())
        .await
        .map_err(|e| format!("stream {}: {e}", cfg.stream))?;
    let name = format!("{}-runners", cfg.stream);
    let consumer = stream
        .get_or_create_consumer(
            &name,
            pull::Config {
                durable_name: Some(name.clone()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: cfg.ack_wait,
                // Every redelivery is seen (and answered `error`).
                max_deliver: -1,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("consumer {name}: {e}"))?;
    let name = format!("{}-outcomes", cfg.stream);
    let config = stream::Config {
        name: name.clone(),
        subjects: vec![format!("{}.outcomes.*", cfg.stream)],
        max_messages_per_subject: 1,
        max_age: ttl,
        ..Default::default()
    };
    js.create_or_update_stream(config)
        .await
        .map_err(|e| format!("stream {name}: {e}"))?;
    let outcomes = js
        .get_stream(name.as_str())
        .await
        .map_err(|e| format!("stream {name}: {e}"))?;
    Ok((consumer, outcomes))
}

/// What the pool tells the NATS task.
pub enum NatsCmd {
    /// Publish a submit to the stream.
    Publish {
        /// The job's number here.
        job: JobId,
        /// Its id (`INSTANCE-N`).
        id: String,
        /// Module.
        module: String,
        /// Input.
        input: Bytes,
        /// Its time limit, if it asked for one.
        timeout_ms: Option<u64>,
        /// Nobody waits for the answer (detached or HTTP).
        detached: bool,
    },
    /// A part of fetched job `key`.
    Part {
        /// The fetched message's key.
        key: u64,
        /// Bytes.
        data: Bytes,
    },
    /// Fetched job `key` ended.
    End {
        /// The fetched message's key.
        key: u64,
        /// Output, or the failure.
        end: Result<Bytes, (Reason, String)>,
    },
}

/// What the NATS task tells the pool.
pub enum NatsEvent {
    /// A detached job is in the stream: its id may be given out.
    Published {
        /// Job number.
        job: JobId,
    },
    /// A publish failed: the job fails with this reason.
    Refused {
        /// Job number.
        job: JobId,
        /// `overload` (stream full) or `error` (queue unavailable).
        reason: Reason,
        /// Why.
        message: String,
    },
    /// An answer for a job submitted here.
    Answer {
        /// Job number.
        job: JobId,
        /// A part (`Ok(None)` never happens), or the end.
        answer: Answer,
    },
    /// A job fetched from the stream, to run here.
    Fetched {
        /// Its key for [`NatsCmd::Part`] and [`NatsCmd::End`].
        key: u64,
        /// Module.
        module: String,
        /// Input.
        input: Bytes,
        /// Time limit it asked for.
        timeout_ms: Option<u64>,
    },
}

/// An answer through NATS.
pub enum Answer {
    /// A part.
    Part(Bytes),
    /// The response.
    Completed(Bytes),
    /// The failure.
    Failed(Reason, String),
}

/// The pool's side: where its commands go, and how many free children it
/// has (the fetcher takes no more).
pub struct PoolSide {
    /// Commands.
    pub tx: mpsc::UnboundedSender<NatsCmd>,
    /// Free children (idle, none queued); 0 while shutting down.
    pub free: watch::Sender<usize>,
}

/// Where a fetched job's answers go (a [`crate::job::Reply`]).
pub struct NatsReply {
    key: u64,
    tx: mpsc::UnboundedSender<NatsCmd>,
}

impl NatsReply {
    /// For fetched message `key`.
    pub fn new(key: u64, tx: mpsc::UnboundedSender<NatsCmd>) -> NatsReply {
        NatsReply { key, tx }
    }
    /// Sends a part on.
    pub fn part(&self, data: Bytes) {
        let _ = self.tx.send(NatsCmd::Part {
            key: self.key,
            data,
        });
    }
    /// Sends the end on.
    pub fn end(self, end: Result<Bytes, (Reason, String)>) {
        let _ = self.tx.send(NatsCmd::End { key: self.key, end });
    }
}

/// Reads outcomes kept in the bucket, for `status` and `result` of jobs
/// submitted to other masters.
#[derive(Clone)]
pub struct Outcomes {
    stream: stream::Stream,
    prefix: String,
}

impl Outcomes {
    /// The job's view and output, if its outcome is kept.
    pub async fn get(&self, id: &str) -> Option<(JobView, Bytes)> {
        // A job id is `INSTANCE-N`: nothing that could widen the subject.
        if !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return None;
        }
        let subject = format!("{}.outcomes.{id}", self.prefix);
        let value = self
            .stream
            .get_last_raw_message_by_subject(&subject)
            .await
            .ok()?
            .payload;
        let cut = value.iter().position(|&b| b == b'\n')?;
        let view: JobView = serde_json::from_slice(&value[..cut]).ok()?;
        Some((view, value.slice(cut + 1..)))
    }
}

/// A message fetched and handed to the pool.
struct Fetched {
    msg: jetstream::Message,
    id: String,
    module: String,
    job: Option<String>,
    reply: Option<String>,
    created: String,
}

/// The NATS task, ready to run once the pool exists.
pub struct Runner {
    task: Task,
    rx: mpsc::UnboundedReceiver<NatsCmd>,
    answers: async_nats::Subscriber,
    free_rx: watch::Receiver<usize>,
}

/// Subscribes to this master's answer subject (`instance`'s jobs) and
/// returns the pool's side, the outcome reader, and the task to run.
pub async fn prepare(
    opened: Opened,
    instance: &str,
) -> Result<(PoolSide, Outcomes, Runner), NatsError> {
    let subject = format!("{}.answers.{instance}", opened.cfg.stream);
    let answers = opened
        .client
        .subscribe(subject.clone())
        .await
        .map_err(|e| NatsError::Unreachable {
            url: opened.cfg.url.clone(),
            why: format!("subscribe {subject}: {e}"),
        })?;
    let (tx, rx) = mpsc::unbounded_channel();
    let (free, free_rx) = watch::channel(0);
    let outcomes = Outcomes {
        stream: opened.outcomes.clone(),
        prefix: opened.cfg.stream.clone(),
    };
    let task = Task {
        subject,
        opened,
        pool: None,
        inflight: HashMap::new(),
        next_key: 1,
    };
    let runner = Runner {
        task,
        rx,
        answers,
        free_rx,
    };
    Ok((PoolSide { tx, free }, outcomes, runner))
}

impl Runner {
    /// Runs the NATS side for `pool` until the pool is gone.
    pub async fn run(self, pool: PoolHandle) {
        let Runner {
            mut task,
            rx,
            answers,
            free_rx,
        } = self;
        started(&task.opened.cfg);
        let (fetched_tx, fetched_rx) = mpsc::unbounded_channel();
        tokio::spawn(fetcher(task.opened.consumer.clone(), free_rx, fetched_tx));
        task.pool = Some(pool);
        task.run(rx, answers, fetched_rx).await;
    }
}

/// Pulls as many messages as there are free children, no more.
async fn fetcher(
    consumer: jetstream::consumer::Consumer<pull::Config>,
    mut free: watch::Receiver<usize>,
    out: mpsc::UnboundedSender<jetstream::Message>,
) {
    loop {
        let n = *free.borrow_and_update();
        if n == 0 {
            if free.changed().await.is_err() {
                return;
            }
            continue;
        }
        let batch = consumer
            .fetch()
            .max_messages(n)
            .expires(FETCH_EXPIRES)
            .messages()
            .await;
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                debug!(error = %e, "fetch failed; trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut got = 0;
        // A batch ends at its count or its expiry; the bound is a guard.
        let deadline = tokio::time::Instant::now() + FETCH_EXPIRES * 2;
        while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, batch.next()).await {
            match msg {
                Ok(msg) => {
                    got += 1;
                    if out.send(msg).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    debug!(error = %e, "fetch ended");
                    break;
                }
            }
        }
        debug!(asked = n, got, "fetched");
        if got > 0 {
            // The pool says how many are free once it has them.
            let _ = tokio::time::timeout(FETCH_EXPIRES, free.changed()).await;
        }
    }
}

struct Task {
    subject: String,
    opened: Opened,
    pool: Option<PoolHandle>,
    inflight: HashMap<u64, Fetched>,
    next_key: u64,
}

fn header(headers: Option<&HeaderMap>, name: &str) -> Option<String> {
    headers?.get(name).map(|v| v.as_str().to_owned())
}

fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

impl Task {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<NatsCmd>,
        mut answers: async_nats::Subscriber,
        mut fetched: mpsc::UnboundedReceiver<jetstream::Message>,
    ) {
        let mut progress = tokio::time::interval(self.opened.cfg.ack_wait / 3);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.command(cmd).await,
                    None => return,
                },
                Some(msg) = answers.next() => self.answer(msg),
                Some(msg) = fetched.recv() => self.fetched(msg).await,
                _ = progress.tick() => {
                    for f in self.inflight.values() {
                        let _ = f.msg.ack_with(AckKind::Progress).await;
                    }
                }
            }
        }
    }

    async fn command(&mut self, cmd: NatsCmd) {
        match cmd {
            NatsCmd::Publish {
                job,
                id,
                module,
                input,
                timeout_ms,
                detached,
            } => {
                let mut headers = HeaderMap::new();
                headers.insert("Nats-Msg-Id", id.as_str());
                headers.insert(H_ID, id.as_str());
                headers.insert(H_JOB, job.to_string().as_str());
                headers.insert(H_MODULE, module.as_str());
                // Detached too: this master's table records the outcome.
                headers.insert(H_REPLY, self.subject.as_str());
                if let Some(ms) = timeout_ms {
                    headers.insert(H_TIMEOUT, ms.to_string().as_str());
                }
                let js = self.opened.js.clone();
                let (cfg, (job_max, ttl)) = (self.opened.cfg.clone(), self.opened.limits);
                let subject = format!("{}.jobs", self.opened.cfg.stream);
                let pool = self.pool.clone().expect("running");
                // The client would keep a publish while it reconnects and
                // send it later: a job its submitter was told failed
                // would run after all.
                let state = self.opened.client.connection_state();
                if state != async_nats::connection::State::Connected {
                    pool.send_nats(NatsEvent::Refused {
                        job,
                        reason: Reason::Error,
                        message: format!("queue unavailable: NATS is {state}"),
                    });
                    return;
                }
                // Each publish waits for its own ack, off this loop.
                tokio::spawn(async move {
                    let publish = || async {
                        match js
                            .publish_with_headers(subject.clone(), headers.clone(), input.clone())
                            .await
                        {
                            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                            Err(e) => Err(e.to_string()),
                        }
                    };
                    let mut acked = publish().await;
                    if acked.as_ref().is_err_and(|e| e.contains("no stream")) {
                        // The server lost the streams (restarted without its
                        // store): make them again, once, and retry.
                        warn!("the NATS server has no job stream; making it again");
                        if streams(&js, &cfg, job_max, ttl).await.is_ok() {
                            acked = publish().await;
                        }
                    }
                    if acked.is_ok() && detached {
                        pool.send_nats(NatsEvent::Published { job });
                    }
                    if let Err(e) = acked {
                        let (reason, message) = if e.contains("maximum messages") {
                            (
                                Reason::Overload,
                                format!("the shared queue is full (--job-max): {e}"),
                            )
                        } else {
                            (Reason::Error, format!("queue unavailable: {e}"))
                        };
                        pool.send_nats(NatsEvent::Refused {
                            job,
                            reason,
                            message,
                        });
                    }
                });
            }
            NatsCmd::Part { key, data } => {
                if let Some(f) = self.inflight.get(&key) {
                    if let Some(job) = self.local_job(f) {
                        if let Some(pool) = &self.pool {
                            let answer = Answer::Part(data);
                            pool.send_nats(NatsEvent::Answer { job, answer });
                        }
                    } else if let (Some(reply), Some(job)) = (&f.reply, &f.job) {
                        let mut headers = HeaderMap::new();
                        headers.insert(H_JOB, job.as_str());
                        headers.insert(H_KIND, "part");
                        let _ = self
                            .opened
                            .client
                            .publish_with_headers(reply.clone(), headers, data)
                            .await;
                    }
                }
            }
            NatsCmd::End { key, end } => {
                if let Some(f) = self.inflight.remove(&key) {
                    self.finish(f, end, false);
                }
            }
        }
    }

    /// Answers a fetched job: to its submitter's master, into the bucket,
    /// then the ack (so an answer is never lost to a crash in between: the
    /// worst is an answer sent and the job also failed as lost).
    /// `term`: the message is terminated instead of acked (it must never
    /// be delivered again, and did not run here).
    fn finish(&self, mut f: Fetched, end: Result<Bytes, (Reason, String)>, term: bool) {
        // A job submitted here is answered here, NATS or not.
        if let (Some(job), Some(pool)) = (self.local_job(&f), &self.pool) {
            let answer = match &end {
                Ok(output) => Answer::Completed(output.clone()),
                Err((reason, message)) => Answer::Failed(*reason, message.clone()),
            };
            pool.send_nats(NatsEvent::Answer { job, answer });
            f.reply = None;
        }
        let client = self.opened.client.clone();
        let js = self.opened.js.clone();
        let kept = format!("{}.outcomes.{}", self.opened.cfg.stream, f.id);
        tokio::spawn(async move {
            let (status, reason, message, output) = match &end {
                Ok(output) => (JobStatus::Completed, None, None, output.clone()),
                Err((reason, message)) => {
                    let status = if *reason == Reason::Cancelled {
                        JobStatus::Cancelled
                    } else {
                        JobStatus::Failed
                    };
                    (status, Some(*reason), Some(message.clone()), Bytes::new())
                }
            };
            if let (Some(reply), Some(job)) = (&f.reply, &f.job) {
                let mut headers = HeaderMap::new();
                headers.insert(H_JOB, job.as_str());
                match &end {
                    Ok(_) => headers.insert(H_KIND, "completed"),
                    Err((reason, _)) => {
                        headers.insert(H_KIND, "failed");
                        headers.insert(H_REASON, reason.as_str());
                    }
                }
                let payload = match &end {
                    Ok(output) => output.clone(),
                    Err((_, message)) => Bytes::from(message.clone().into_bytes()),
                };
                let _ = client
                    .publish_with_headers(reply.clone(), headers, payload)
                    .await;
            }
            let view = JobView {
                id: f.id.clone(),
                module: f.module.clone(),
                status,
                reason,
                message,
                created_at: f.created,
                started_at: None,
                finished_at: Some(now()),
            };
            let mut value = serde_json::to_vec(&view).unwrap_or_default();
            value.push(b'\n');
            value.extend_from_slice(&output);
            let put = match js.publish(kept, value.into()).await {
                Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = put {
                warn!(job = %f.id, error = %e, "cannot keep the outcome on NATS");
            }
            let _ = client.flush().await;
            let acked = if term {
                f.msg.ack_with(AckKind::Term).await
            } else {
                f.msg.double_ack().await
            };
            if let Err(e) = acked {
                warn!(job = %f.id, error = %e, "cannot ack the job's message");
            }
        });
    }

    /// The job number of a fetched job submitted to this very master (its
    /// answers need not cross NATS).
    fn local_job(&self, f: &Fetched) -> Option<JobId> {
        if f.reply.as_deref() != Some(self.subject.as_str()) {
            return None;
        }
        f.job.as_deref()?.parse().ok()
    }

    fn answer(&self, msg: async_nats::Message) {
        let headers = msg.headers.as_ref();
        let Some(job) = header(headers, H_JOB).and_then(|j| j.parse().ok()) else {
            debug!("answer without a job number; dropped");
            return;
        };
        let answer = match header(headers, H_KIND).as_deref() {
            Some("part") => Answer::Part(msg.payload),
            Some("completed") => Answer::Completed(msg.payload),
            Some("failed") => {
                let reason = header(headers, H_REASON)
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(Reason::Error);
                Answer::Failed(reason, String::from_utf8_lossy(&msg.payload).into_owned())
            }
            _ => return,
        };
        if let Some(pool) = &self.pool {
            pool.send_nats(NatsEvent::Answer { job, answer });
        }
    }

    async fn fetched(&mut self, msg: jetstream::Message) {
        let headers = msg.headers.as_ref();
        let id = header(headers, H_ID).unwrap_or_default();
        let module = header(headers, H_MODULE).unwrap_or_default();
        let f = Fetched {
            job: header(headers, H_JOB),
            reply: header(headers, H_REPLY),
            id,
            module,
            created: now(),
            msg,
        };
        let delivered = f.msg.info().map_or(1, |i| i.delivered);
        if delivered > 1 {
            // Fetched before by a master that is gone or stalled: it may
            // have run, so it never runs again. If it did end (its ack was
            // lost, NATS being down then), its outcome stands.
            let outcomes = Outcomes {
                stream: self.opened.outcomes.clone(),
                prefix: self.opened.cfg.stream.clone(),
            };
            if outcomes.get(&f.id).await.is_some() {
                debug!(job = %f.id, "job delivered again after it ended; dropping it");
                let _ = f.msg.ack_with(AckKind::Term).await;
                return;
            }
            warn!(job = %f.id, delivered, "job delivered again after its master was lost; failing it");
            let message = "the master running it was lost".to_owned();
            self.finish(f, Err((Reason::Error, message)), true);
            return;
        }
        let key = self.next_key;
        self.next_key += 1;
        let timeout_ms = header(f.msg.headers.as_ref(), H_TIMEOUT).and_then(|t| t.parse().ok());
        let (module, input) = (f.module.clone(), f.msg.payload.clone());
        debug!(job = %f.id, key, "job fetched from the stream");
        self.inflight.insert(key, f);
        if let Some(pool) = &self.pool {
            pool.send_nats(NatsEvent::Fetched {
                key,
                module,
                input,
                timeout_ms,
            });
        }
    }
}

/// Turns the pool's events into its commands.
impl PoolHandle {
    /// Hands the pool a NATS event.
    pub fn send_nats(&self, event: NatsEvent) {
        self.send_cmd(PoolCmd::Nats(event));
    }
}

/// Logged once the NATS side runs.
fn started(cfg: &NatsConfig) {
    info!(url = %cfg.url, stream = %cfg.stream, ack_wait_secs = cfg.ack_wait.as_secs_f64(), "sharing the queue on NATS JetStream");
}
