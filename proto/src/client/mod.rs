//! The async Rust client: one connection, many jobs in flight, answers
//! matched by tag (they may come back in any order), parts streamed as they
//! arrive.
//!
//! A reader task routes each answer to the job's own inbox; a writer task
//! batches submits into few writes. Both end when the [`Client`] is dropped
//! or the master hangs up; jobs still waiting then see
//! [`ClientError::Disconnected`].

mod blocking;
mod inbox;

pub use blocking::BlockingClient;

use crate::codec::{self, CodecError};
use crate::jobs::{
    format_id, ErrorBody, FailureBody, JobList, JobRef, JobStatus, JobView, Outcome, SubmitOptions,
};
use crate::messages::{ClientHello, Hello, ToClient, ToMaster, PROTOCOL_VERSION};
use crate::outbox::{Outbox, Sent};
use crate::reason::Reason;
use crate::stats::Stats;
use bytes::{Bytes, BytesMut};
use inbox::{ByTag, Inbox};
use serde::{de::DeserializeOwned, Serialize};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot};

/// How long `connect` waits for the master's welcome.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(5);

/// A job that ended without a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFailure {
    /// The master's job number (the wire's `job`).
    pub job: u64,
    /// The job id (`{instance}-{job}`).
    pub id: String,
    /// The reason word.
    pub reason: Reason,
    /// Detail text.
    pub message: String,
    /// The submit's context, unchanged.
    pub context: Bytes,
}

impl fmt::Display for JobFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

/// A job's response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed {
    /// The master's job number (the wire's `job`).
    pub job: u64,
    /// The job id (`{instance}-{job}`).
    pub id: String,
    /// The module's response bytes.
    pub output: Bytes,
    /// The submit's context, unchanged.
    pub context: Bytes,
}

/// One thing that happened to a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEvent {
    /// A part, in the order the module sent them.
    Part(Bytes),
    /// The final response.
    Completed(Completed),
    /// The job failed.
    Failed(JobFailure),
}

/// What the client can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting or writing failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The master sent something unreadable.
    #[error("protocol: {0}")]
    Codec(#[from] CodecError),
    /// The master refused the hello.
    #[error("refused by master: {0}")]
    Refused(String),
    /// No welcome arrived in time.
    #[error("no welcome from master within {0:?}")]
    Timeout(Duration),
    /// The connection is gone; the job's outcome is unknown.
    #[error("connection to master lost")]
    Disconnected,
    /// The job failed with a reason.
    #[error("job failed: {0}")]
    Job(JobFailure),
    /// The input (or context) is larger than the master accepts.
    #[error("{len} bytes exceed the master's limit of {max}")]
    TooLarge {
        /// Input length.
        len: usize,
        /// The master's payload limit.
        max: usize,
    },
    /// A JSON answer could not be decoded.
    #[error("bad JSON from master: {0}")]
    Json(#[from] serde_json::Error),
    /// No such job (never was, evicted, or from another master run).
    #[error("{0}")]
    NotFound(String),
    /// The job is not in a state that allows the operation.
    #[error("job {} is {}", .0.id, .0.status)]
    Conflict(JobRef),
    /// The master found the request malformed (a bad job id, say).
    #[error("{0}")]
    Invalid(String),
    /// The client token could not be read.
    #[error("client token: {0}")]
    Token(String),
}

/// A job operation's raw answer: what the master's
/// [`ToClient::Reply`] carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// How it went.
    pub outcome: Outcome,
    /// The JSON body (as the HTTP API gives it).
    pub json: String,
    /// A completed job's response, for `result`.
    pub output: Bytes,
}

/// What `result` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobResult {
    /// The job completed with this response.
    Completed(Bytes),
    /// It failed or was cancelled.
    Failed(FailureBody),
    /// It has not finished (yet).
    Pending(JobRef),
}

impl Reply {
    fn body<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        Ok(serde_json::from_str(&self.json)?)
    }

    /// The `Ok` JSON as `T`; any other outcome as an error.
    fn into_ok<T: DeserializeOwned>(self) -> Result<T, ClientError> {
        match self.outcome {
            Outcome::Ok => self.body(),
            _ => Err(self.into_err()),
        }
    }

    /// A non-`Ok` outcome as an error.
    fn into_err(self) -> ClientError {
        let decoded = || -> Result<ClientError, ClientError> {
            Ok(match self.outcome {
                Outcome::Ok => ClientError::Invalid("unexpected success".into()),
                Outcome::NotFound => ClientError::NotFound(self.body::<ErrorBody>()?.error),
                Outcome::Invalid => ClientError::Invalid(self.body::<ErrorBody>()?.error),
                Outcome::Conflict => ClientError::Conflict(self.body()?),
                Outcome::Failed => {
                    let f: FailureBody = self.body()?;
                    let job = crate::jobs::parse_id(&f.id).map_or(0, |(_, n)| n);
                    ClientError::Job(JobFailure {
                        job,
                        id: f.id,
                        reason: f.reason,
                        message: f.message,
                        context: Bytes::new(),
                    })
                }
            })
        };
        decoded().unwrap_or_else(|e| e)
    }
}

#[derive(Default)]
struct Routes {
    jobs: ByTag<Arc<Inbox<JobEvent>>>,
    stats: ByTag<oneshot::Sender<String>>,
    ops: ByTag<oneshot::Sender<Reply>>,
    events: ByTag<mpsc::UnboundedSender<(String, String)>>,
    /// The master's job-id prefix, for the ids of answers.
    instance: Arc<str>,
    closed: bool,
}

impl Drop for Routes {
    /// Jobs still waiting when the client and its reader are gone see
    /// [`ClientError::Disconnected`].
    fn drop(&mut self) {
        for inbox in self.jobs.values() {
            inbox.close();
        }
    }
}

/// A connection to a master.
pub struct Client {
    out: Outbox<ToMaster>,
    routes: Arc<Mutex<Routes>>,
    next_tag: AtomicU64,
    max_payload: usize,
    instance: Arc<str>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Answers of one submitted job.
pub struct JobHandle {
    tag: u64,
    inbox: Arc<Inbox<JobEvent>>,
}

impl JobHandle {
    /// The tag this job was submitted with.
    pub fn tag(&self) -> u64 {
        self.tag
    }

    /// The next part or the final answer.
    pub async fn next_event(&mut self) -> Result<JobEvent, ClientError> {
        self.inbox.next().await.ok_or(ClientError::Disconnected)
    }

    /// Waits for the final answer, skipping parts.
    pub async fn finish(mut self) -> Result<Completed, ClientError> {
        loop {
            match self.next_event().await? {
                JobEvent::Part(_) => {}
                JobEvent::Completed(done) => return Ok(done),
                JobEvent::Failed(failure) => return Err(ClientError::Job(failure)),
            }
        }
    }
}

impl Client {
    /// Connects and says hello as a client. With `token` `None`, the token
    /// comes from the environment (`TASKMASTER_TOKEN`, or the file named by
    /// `TASKMASTER_TOKEN_FILE`), if any.
    pub async fn connect(
        addr: impl ToSocketAddrs,
        token: Option<String>,
    ) -> Result<Client, ClientError> {
        let hello = client_hello(token)?;
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (read, mut write) = stream.into_split();
        write.write_all(&hello).await?;
        let mut reader = codec::frame_reader(read, codec::DEFAULT_MAX_PAYLOAD);
        let welcome = tokio::time::timeout(
            WELCOME_TIMEOUT,
            codec::read_message::<ToClient, _>(&mut reader),
        )
        .await
        .map_err(|_| ClientError::Timeout(WELCOME_TIMEOUT))??;
        let (max_payload, instance) = welcomed(welcome)?;
        let instance = Arc::<str>::from(instance);
        codec::set_max_payload(&mut reader, answer_limit(max_payload));
        let (out, writer) = Outbox::new(write);
        tokio::spawn(async move {
            let encode = |m: ToMaster, buf: &mut BytesMut| codec::encode(&m, buf);
            let _ = writer.run(encode, std::future::pending()).await;
        });
        let routes = Arc::new(Mutex::new(Routes {
            jobs: ByTag::default(),
            stats: ByTag::default(),
            ops: ByTag::default(),
            events: ByTag::default(),
            instance: instance.clone(),
            closed: false,
        }));
        let reader = tokio::spawn(route_answers(reader, routes.clone()));
        Ok(Client {
            out,
            routes,
            next_tag: AtomicU64::new(1),
            max_payload,
            instance,
            reader,
        })
    }

    /// The largest input the master accepts.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// This master run's job-id prefix.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Submits a job; its answers arrive on the returned handle.
    pub fn submit(
        &self,
        module: &str,
        input: impl Into<Bytes>,
        context: impl Into<Bytes>,
    ) -> Result<JobHandle, ClientError> {
        self.submit_with(module, input, context, SubmitOptions::default())
    }

    /// Submits a job with options (a time limit, say) and waits on this
    /// connection for its answers. For a detached submit use
    /// [`Client::submit_detached`].
    pub fn submit_with(
        &self,
        module: &str,
        input: impl Into<Bytes>,
        context: impl Into<Bytes>,
        options: SubmitOptions,
    ) -> Result<JobHandle, ClientError> {
        let options = SubmitOptions {
            detach: false,
            start_later: false,
            ..options
        };
        let input = input.into();
        let context = context.into();
        check_sizes(&input, &context, self.max_payload)?;
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        let inbox = Arc::new(Inbox::default());
        let lone = {
            let mut routes = self.routes.lock().expect("routes lock");
            if routes.closed {
                return Err(ClientError::Disconnected);
            }
            let lone = routes.jobs.is_empty();
            routes.jobs.insert(tag, inbox.clone());
            lone
        };
        let msg = ToMaster::Submit {
            tag,
            module: module.to_owned(),
            context,
            options,
            input,
        };
        // A lone job in flight has nothing to share a write with: it skips
        // the writer task. With others in flight, submits share writes.
        let sent = if lone {
            !matches!(self.out.send_now(msg, codec::encode), Sent::Gone)
        } else {
            self.out.send(msg)
        };
        if !sent {
            self.routes.lock().expect("routes lock").jobs.remove(&tag);
            return Err(ClientError::Disconnected);
        }
        Ok(JobHandle { tag, inbox })
    }

    /// Submits a job without waiting for it (fire and forget, or
    /// `start_later`): returns its id and status at once. A refusal
    /// (`overload`, ...) is [`ClientError::Job`].
    pub async fn submit_detached(
        &self,
        module: &str,
        input: impl Into<Bytes>,
        options: SubmitOptions,
    ) -> Result<JobRef, ClientError> {
        let input = input.into();
        if input.len() > self.max_payload {
            return Err(ClientError::TooLarge {
                len: input.len(),
                max: self.max_payload,
            });
        }
        let options = SubmitOptions {
            detach: true,
            ..options
        };
        self.op(|tag| ToMaster::Submit {
            tag,
            module: module.to_owned(),
            context: Bytes::new(),
            options,
            input,
        })
        .await?
        .into_ok()
    }

    /// What the master knows of a job.
    pub async fn status(&self, id: &str) -> Result<JobView, ClientError> {
        let id = id.to_owned();
        self.op(|tag| ToMaster::Status { tag, id }).await?.into_ok()
    }

    /// A job's outcome, waiting up to `wait` for it to finish.
    pub async fn result(&self, id: &str, wait: Duration) -> Result<JobResult, ClientError> {
        let id = id.to_owned();
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        let reply = self.op(|tag| ToMaster::Result { tag, id, wait_ms }).await?;
        match reply.outcome {
            Outcome::Ok => Ok(JobResult::Completed(reply.output)),
            Outcome::Failed => Ok(JobResult::Failed(reply.body()?)),
            Outcome::Conflict => Ok(JobResult::Pending(reply.body()?)),
            _ => Err(reply.into_err()),
        }
    }

    /// Puts a `start-later` job in the queue.
    pub async fn start(&self, id: &str) -> Result<JobRef, ClientError> {
        let id = id.to_owned();
        self.op(|tag| ToMaster::Start { tag, id }).await?.into_ok()
    }

    /// Cancels a job that has not finished.
    pub async fn cancel(&self, id: &str) -> Result<JobRef, ClientError> {
        let id = id.to_owned();
        self.op(|tag| ToMaster::Cancel { tag, id }).await?.into_ok()
    }

    /// Recent jobs, newest first (all statuses, or only `status`).
    pub async fn jobs(
        &self,
        limit: u32,
        status: Option<JobStatus>,
    ) -> Result<JobList, ClientError> {
        let status = status.map(|s| s.as_str().to_owned()).unwrap_or_default();
        self.op(|tag| ToMaster::Jobs { tag, limit, status })
            .await?
            .into_ok()
    }

    /// Lifecycle events from now on, as (name, JSON) pairs; only `job`'s if
    /// given. The stream ends when the connection does.
    pub fn events(
        &self,
        job: Option<&str>,
    ) -> Result<mpsc::UnboundedReceiver<(String, String)>, ClientError> {
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut routes = self.routes.lock().expect("routes lock");
            if routes.closed {
                return Err(ClientError::Disconnected);
            }
            routes.events.insert(tag, tx);
        }
        let job = job.unwrap_or_default().to_owned();
        if !self.out.send(ToMaster::Events { tag, job }) {
            return Err(ClientError::Disconnected);
        }
        Ok(rx)
    }

    /// Sends one job operation and waits for its [`Reply`].
    pub async fn op(&self, make: impl FnOnce(u64) -> ToMaster) -> Result<Reply, ClientError> {
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut routes = self.routes.lock().expect("routes lock");
            if routes.closed {
                return Err(ClientError::Disconnected);
            }
            routes.ops.insert(tag, tx);
        }
        if !self.out.send(make(tag)) {
            self.routes.lock().expect("routes lock").ops.remove(&tag);
            return Err(ClientError::Disconnected);
        }
        rx.await.map_err(|_| ClientError::Disconnected)
    }

    /// Runs one job and returns its response bytes (the task-master's
    /// `do-task`).
    pub async fn do_task(
        &self,
        module: &str,
        input: impl Into<Bytes>,
    ) -> Result<Bytes, ClientError> {
        Ok(self
            .submit(module, input, Bytes::new())?
            .finish()
            .await?
            .output)
    }

    /// Runs one job whose input and output are serde values (encoded with
    /// [`codec::encode_value`]; a module decodes them with the handler
    /// library's typed helpers).
    pub async fn do_typed<I: Serialize, O: DeserializeOwned>(
        &self,
        module: &str,
        input: &I,
    ) -> Result<O, ClientError> {
        let bytes = codec::encode_value(input)?;
        let out = self.do_task(module, bytes).await?;
        Ok(codec::decode_value(&out)?)
    }

    /// Pool and queue figures as the master's JSON text.
    pub async fn stats_json(&self) -> Result<String, ClientError> {
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut routes = self.routes.lock().expect("routes lock");
            if routes.closed {
                return Err(ClientError::Disconnected);
            }
            routes.stats.insert(tag, tx);
        }
        if !self.out.send(ToMaster::Stats { tag }) {
            return Err(ClientError::Disconnected);
        }
        rx.await.map_err(|_| ClientError::Disconnected)
    }

    /// Pool and queue figures.
    pub async fn stats(&self) -> Result<Stats, ClientError> {
        Ok(serde_json::from_str(&self.stats_json().await?)?)
    }
}

/// The client hello's frame, with `token`, or else the environment's.
fn client_hello(token: Option<String>) -> Result<Bytes, ClientError> {
    let token = match token {
        Some(t) => Some(t),
        None => crate::handshake::token_from_env().map_err(ClientError::Token)?,
    };
    let hello = Hello::Client(ClientHello {
        version: PROTOCOL_VERSION,
        token,
    });
    Ok(codec::to_frame(&hello)?)
}

/// The master's answer to the hello: its payload limit and job-id prefix,
/// or why there are none.
fn welcomed(answer: Option<ToClient>) -> Result<(usize, String), ClientError> {
    match answer {
        Some(ToClient::Welcome {
            max_payload,
            instance,
            ..
        }) => Ok((max_payload as usize, instance)),
        Some(ToClient::Refused { message }) => Err(ClientError::Refused(message)),
        Some(other) => {
            Err(CodecError::Malformed(format!("expected welcome, got {other:?}")).into())
        }
        None => Err(ClientError::Disconnected),
    }
}

/// The largest answer to read: as large as the master's limit, which can
/// be above the default the welcome was read with.
fn answer_limit(max_payload: usize) -> usize {
    max_payload.max(codec::DEFAULT_MAX_PAYLOAD)
}

/// Refuses, before anything is sent, an input or context the master would
/// refuse (it closes a connection that sends an over-limit context).
fn check_sizes(input: &[u8], context: &[u8], max_payload: usize) -> Result<(), ClientError> {
    if context.len() > codec::MAX_CONTEXT {
        return Err(ClientError::TooLarge {
            len: context.len(),
            max: codec::MAX_CONTEXT,
        });
    }
    if input.len() > max_payload {
        return Err(ClientError::TooLarge {
            len: input.len(),
            max: max_payload,
        });
    }
    Ok(())
}

async fn route_answers(
    mut reader: codec::FrameReader<tokio::net::tcp::OwnedReadHalf>,
    routes: Arc<Mutex<Routes>>,
) {
    while let Ok(Some(msg)) = codec::read_message::<ToClient, _>(&mut reader).await {
        let mut routes = routes.lock().expect("routes lock");
        match msg {
            ToClient::Part { tag, data } => {
                if let Some(inbox) = routes.jobs.get(&tag) {
                    inbox.push(JobEvent::Part(data), false);
                }
            }
            ToClient::Completed {
                tag,
                job,
                context,
                output,
            } => {
                if let Some(inbox) = routes.jobs.remove(&tag) {
                    let done = Completed {
                        job,
                        id: format_id(&routes.instance, job),
                        output,
                        context,
                    };
                    inbox.push(JobEvent::Completed(done), true);
                }
            }
            ToClient::Failed {
                tag,
                job,
                reason,
                message,
                context,
            } => {
                if let Some(inbox) = routes.jobs.remove(&tag) {
                    let failure = JobFailure {
                        job,
                        id: format_id(&routes.instance, job),
                        reason,
                        message,
                        context,
                    };
                    inbox.push(JobEvent::Failed(failure), true);
                }
            }
            ToClient::Stats { tag, json } => {
                if let Some(tx) = routes.stats.remove(&tag) {
                    let _ = tx.send(json);
                }
            }
            ToClient::Reply {
                tag,
                outcome,
                json,
                output,
            } => {
                if let Some(tx) = routes.ops.remove(&tag) {
                    let _ = tx.send(Reply {
                        outcome,
                        json,
                        output,
                    });
                }
            }
            ToClient::Event { tag, name, json } => {
                if let Some(tx) = routes.events.get(&tag) {
                    let _ = tx.send((name, json));
                }
            }
            ToClient::Welcome { .. } | ToClient::Refused { .. } => {}
        }
    }
    let mut routes = routes.lock().expect("routes lock");
    routes.closed = true;
    for (_, inbox) in routes.jobs.drain() {
        inbox.close();
    }
    routes.stats.clear();
    routes.ops.clear();
    routes.events.clear();
}
