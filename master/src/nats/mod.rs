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

mod task;

use crate::types::JobId;
use async_nats::jetstream::{self, consumer::pull, stream};
use bytes::Bytes;
use std::collections::HashMap;
use std::time::Duration;
use task::{fetcher, started, Task};
use taskmaster_proto::jobs::{JobStatus, JobView};
use taskmaster_proto::Reason;
use tokio::sync::{mpsc, watch};
use tracing::warn;

/// How long connecting and setting up the stream may take at start.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a fetch waits for messages before asking again.
const FETCH_EXPIRES: Duration = Duration::from_secs(1);

/// Bytes of a message's headers at most (ids, module name, subject): the
/// rest of NATS's `max_payload` is the job's.
const HEADER_ROOM: usize = 4096;

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

/// The NATS side, connected and set up; [`prepare`] makes it ready to run.
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
    let stream = ensure_stream(js, config).await?;
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
    let shared = consumer.cached_info().config.ack_wait;
    if shared != cfg.ack_wait {
        // The first master made the consumer: its ack wait is everyone's,
        // and progress acks must come often enough for it.
        warn!(
            ack_wait_secs = shared.as_secs_f64(),
            asked_secs = cfg.ack_wait.as_secs_f64(),
            "the shared consumer keeps the ack wait it was made with; --nats-ack-wait differs"
        );
    }
    let name = format!("{}-outcomes", cfg.stream);
    let config = stream::Config {
        name: name.clone(),
        subjects: vec![format!("{}.outcomes.*", cfg.stream)],
        max_messages_per_subject: 1,
        max_age: ttl,
        ..Default::default()
    };
    let outcomes = ensure_stream(js, config).await?;
    Ok((consumer, outcomes))
}

/// Creates the stream `config` names, or updates only our limits on one
/// that exists: replicas, storage and placement an operator chose (a
/// three-node cluster's `--replicas 3`) stay as they are.
async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Stream, String> {
    let name = config.name.clone();
    let err = |e: String| format!("stream {name}: {e}");
    let config = match js.get_stream(name.as_str()).await {
        Ok(existing) => {
            let mut keep = existing.cached_info().config.clone();
            keep.subjects = config.subjects;
            keep.max_messages = config.max_messages;
            keep.max_messages_per_subject = config.max_messages_per_subject;
            keep.max_age = config.max_age;
            keep.discard = config.discard;
            js.update_stream(keep)
                .await
                .map_err(|e| err(e.to_string()))?;
            None
        }
        Err(_) => Some(config),
    };
    if let Some(config) = config {
        js.create_stream(config)
            .await
            .map_err(|e| err(e.to_string()))?;
    }
    js.get_stream(name.as_str())
        .await
        .map_err(|e| err(e.to_string()))
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
        /// A part, or the end.
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
    /// What the NATS task reports (the pool's run loop takes it).
    pub events: Option<mpsc::UnboundedReceiver<NatsEvent>>,
    /// Free children (idle, none queued); 0 while shutting down.
    pub free: watch::Sender<usize>,
}

/// Where a fetched job's answers go (the pool's reply for it).
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
pub(super) struct Fetched {
    pub(super) msg: jetstream::Message,
    pub(super) id: String,
    pub(super) module: String,
    pub(super) job: Option<String>,
    pub(super) reply: Option<String>,
    pub(super) created: String,
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
    let (events_tx, events) = mpsc::unbounded_channel();
    let (free, free_rx) = watch::channel(0);
    let outcomes = Outcomes {
        stream: opened.outcomes.clone(),
        prefix: opened.cfg.stream.clone(),
    };
    let task = Task {
        subject,
        opened,
        outcomes: outcomes.clone(),
        pool: events_tx,
        inflight: HashMap::new(),
        next_key: 1,
    };
    let runner = Runner {
        task,
        rx,
        answers,
        free_rx,
    };
    let side = PoolSide {
        tx,
        free,
        events: Some(events),
    };
    Ok((side, outcomes, runner))
}

impl Runner {
    /// Runs the NATS side until the pool is gone.
    pub async fn run(self) {
        let Runner {
            task,
            rx,
            answers,
            free_rx,
        } = self;
        started(&task.opened.cfg);
        let (fetched_tx, fetched_rx) = mpsc::unbounded_channel();
        tokio::spawn(fetcher(task.opened.consumer.clone(), free_rx, fetched_tx));
        task.run(rx, answers, fetched_rx).await;
    }
}
