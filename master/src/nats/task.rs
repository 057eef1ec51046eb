//! The NATS task's loop: publishes, the fetcher, fetched jobs and their
//! answers, outcomes and acks, the answer subscription.

use super::*;
use async_nats::jetstream::{self, consumer::pull, AckKind};
use async_nats::HeaderMap;
use futures_util::StreamExt;
use tracing::{debug, info};

/// Pulls as many messages as there are free children, no more.
pub(super) async fn fetcher(
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

pub(super) struct Task {
    pub(super) subject: String,
    pub(super) opened: Opened,
    /// Kept outcomes (a redelivered job that ended is not failed again).
    pub(super) outcomes: Outcomes,
    /// The pool's inbox for NATS events.
    pub(super) pool: mpsc::UnboundedSender<NatsEvent>,
    pub(super) inflight: HashMap<u64, Fetched>,
    pub(super) next_key: u64,
}

fn header(headers: Option<&HeaderMap>, name: &str) -> Option<String> {
    headers?.get(name).map(|v| v.as_str().to_owned())
}

fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

impl Task {
    pub(super) async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<NatsCmd>,
        mut answers: async_nats::Subscriber,
        mut fetched: mpsc::UnboundedReceiver<jetstream::Message>,
    ) {
        // The consumer's own ack wait (the first master's), not ours.
        let ack_wait = self.opened.consumer.cached_info().config.ack_wait;
        let mut progress = tokio::time::interval(ack_wait.min(self.opened.cfg.ack_wait) / 3);
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
                let limit = self.room();
                if input.len() > limit {
                    let _ = self.pool.send(NatsEvent::Refused {
                        job,
                        reason: Reason::Error,
                        message: format!(
                            "input of {} bytes is over what the NATS server carries ({limit} bytes with headers)",
                            input.len()
                        ),
                    });
                    return;
                }
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
                let pool = self.pool.clone();
                // The client would keep a publish while it reconnects and
                // send it later: a job its submitter was told failed
                // would run after all.
                let state = self.opened.client.connection_state();
                if state != async_nats::connection::State::Connected {
                    let _ = pool.send(NatsEvent::Refused {
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
                        let _ = pool.send(NatsEvent::Published { job });
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
                        let _ = pool.send(NatsEvent::Refused {
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
                        let answer = Answer::Part(data);
                        let _ = self.pool.send(NatsEvent::Answer { job, answer });
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
        // An output NATS cannot carry would leave its submitter waiting
        // (and the job reported lost later): it fails, saying why.
        let limit = self.room();
        let end = match end {
            Ok(output) if output.len() > limit => Err((
                Reason::Error,
                format!(
                    "output of {} bytes is over what the NATS server carries ({limit} bytes with headers)",
                    output.len()
                ),
            )),
            end => end,
        };
        // A job submitted here is answered here, NATS or not.
        if let Some(job) = self.local_job(&f) {
            let pool = &self.pool;
            let answer = match &end {
                Ok(output) => Answer::Completed(output.clone()),
                Err((reason, message)) => Answer::Failed(*reason, message.clone()),
            };
            let _ = pool.send(NatsEvent::Answer { job, answer });
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

    /// The most payload bytes one message may carry: the server's
    /// `max_payload` less room for our headers.
    fn room(&self) -> usize {
        let max = self.opened.client.server_info().max_payload;
        max.saturating_sub(HEADER_ROOM)
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
        let _ = self.pool.send(NatsEvent::Answer { job, answer });
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
            if self.outcomes.get(&f.id).await.is_some() {
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
        let _ = self.pool.send(NatsEvent::Fetched {
            key,
            module,
            input,
            timeout_ms,
        });
    }
}

/// Logged once the NATS side runs.
pub(super) fn started(cfg: &NatsConfig) {
    info!(url = %cfg.url, stream = %cfg.stream, ack_wait_secs = cfg.ack_wait.as_secs_f64(), "sharing the queue on NATS JetStream");
}
