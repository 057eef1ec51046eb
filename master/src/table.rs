//! The job table: every accepted job's status, times and outcome, owned by
//! the pool actor (no locks). Finished jobs stay for `--keep-results` jobs,
//! `--result-ttl` seconds and `--keep-results-bytes` of responses, oldest
//! evicted first, so memory stays bounded whatever the load. Waiters
//! (`result --wait`, HTTP `wait=`) are told the moment their job ends.

use crate::job::{Answer, Body, JobId, Queued};
use crate::slots::Slots;
use crate::store::StoredJob;
use crate::types::ChildId;
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use taskmaster_proto::jobs::{format_id, JobList, JobRef, JobStatus, JobView};
use taskmaster_proto::Reason;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::time::delay_queue;

/// Responses up to this size are copied when kept: a small response is a
/// slice of its connection's read buffer, and keeping the slice would keep
/// the whole buffer alive.
const COPY_BELOW: usize = 4096;

/// How much the table keeps.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Finished jobs kept.
    pub keep: usize,
    /// How long a finished job is kept.
    pub ttl: Duration,
    /// Response bytes kept in all.
    pub bytes: usize,
}

/// How a job ended.
#[derive(Clone)]
pub enum End {
    /// With this response.
    Completed(Bytes),
    /// With this reason (`cancelled` makes the status `cancelled`).
    Failed(Reason, String),
}

/// One job's entry.
pub struct Record {
    module: Arc<str>,
    status: JobStatus,
    created: Instant,
    /// When it joined the queue (for queue-wait figures; a start-later
    /// job's held time does not count).
    queued_mono: Instant,
    started: Option<Instant>,
    finished: Option<Instant>,
    failure: Option<(Reason, String)>,
    output: Option<Bytes>,
    waiters: Vec<oneshot::Sender<Answer>>,
    /// Its run-time limit (`None`: none).
    pub timeout: Option<Duration>,
    /// Its armed time limit in the pool's delay queue.
    pub timer: Option<delay_queue::Key>,
    /// The child running it.
    pub child: Option<ChildId>,
    /// A `start-later` job's module, input and reply until it is started.
    /// (Boxed: rare, and the record stays small to move.)
    pub parked: Option<Box<Queued>>,
    /// Kept in the `--state-dir` store too (a detached or start-later job
    /// of a master with one).
    pub durable: bool,
    /// Its place in the queue, for the store (queued jobs come back in
    /// this order after a restart).
    pub order: u64,
    /// Its lane, for the store.
    pub priority: taskmaster_proto::Priority,
    /// Its retries asked for, for the store.
    pub retries: u32,
}

impl Record {
    /// Its module.
    pub fn module(&self) -> &str {
        &self.module
    }

    /// Its status.
    pub fn status(&self) -> JobStatus {
        self.status
    }
}

/// Timings of a job that just ended, for the metrics.
pub struct Ended {
    /// Time from accepted to started, if it started.
    pub waited: Option<Duration>,
    /// Time from started to finished, if it started.
    pub ran: Option<Duration>,
    /// Its armed time limit, to disarm.
    pub timer: Option<delay_queue::Key>,
    /// Its module (for the module's run-time estimate).
    pub module: Arc<str>,
}

/// Every job the master knows.
pub struct JobTable {
    instance: Arc<str>,
    limits: Limits,
    records: Slots<Record>,
    /// The wall clock at a monotonic instant: times are kept as `Instant`s
    /// (one cheap clock read each) and turned into wall time only when
    /// shown.
    epoch: Epoch,
    /// Finished jobs in the order they ended: eviction order.
    finished: VecDeque<(JobId, Instant)>,
    result_bytes: usize,
    start_later: usize,
    /// Durable jobs evicted since last asked: to delete from the store.
    evicted: Vec<JobId>,
    /// Hold durable jobs' outcomes for waiters instead of sending them
    /// (`--state-dir`: an outcome is told only once it is on disk).
    hold: bool,
    /// Outcomes held for their waiters.
    held: Vec<(oneshot::Sender<Answer>, Answer)>,
    /// The time read once for a round of the pool's commands (`None`: read
    /// it at the next use). Three clock reads per job were 4% of the
    /// master's time at 4 clients × 100; within a round (microseconds) one
    /// reading serves.
    clock: Option<Instant>,
}

/// A wall-clock time and the monotonic instant it was read at.
#[derive(Clone, Copy)]
struct Epoch(SystemTime, Instant);

impl Epoch {
    fn rfc3339(self, t: Instant) -> String {
        humantime::format_rfc3339_millis(self.wall(t)).to_string()
    }

    fn wall(self, t: Instant) -> SystemTime {
        match t.checked_duration_since(self.1) {
            Some(after) => self.0 + after,
            None => self.0 - self.1.duration_since(t),
        }
    }

    /// Milliseconds since the Unix epoch at `t`.
    fn unix_ms(self, t: Instant) -> u64 {
        self.wall(t)
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    /// The instant of a stored wall-clock time (one from before this
    /// process may lie before the earliest instant the clock can show: it
    /// is then shown as that).
    fn instant(self, unix_ms: u64) -> Instant {
        let wall = SystemTime::UNIX_EPOCH + Duration::from_millis(unix_ms);
        match wall.duration_since(self.0) {
            Ok(after) => self.1 + after,
            Err(e) => self.1.checked_sub(e.duration()).unwrap_or(self.1),
        }
    }
}

impl JobTable {
    /// An empty table for the master run `instance`.
    pub fn new(instance: Arc<str>, limits: Limits) -> JobTable {
        JobTable {
            instance,
            limits,
            records: Slots::default(),
            epoch: Epoch(SystemTime::now(), Instant::now()),
            finished: VecDeque::new(),
            result_bytes: 0,
            start_later: 0,
            evicted: Vec::new(),
            hold: false,
            held: Vec::new(),
            clock: None,
        }
    }

    /// The time for this round of the pool's commands.
    fn now(&mut self) -> Instant {
        *self.clock.get_or_insert_with(Instant::now)
    }

    /// A new round begins (the pool waited, or many commands passed): the
    /// next use reads the clock again.
    pub fn tick(&mut self) {
        self.clock = None;
    }

    /// From now on, outcomes of durable jobs are held for their waiters
    /// ([`JobTable::take_held`]) instead of sent.
    pub fn hold_outcomes(&mut self) {
        self.hold = true;
    }

    /// Outcomes held for waiters since the last call.
    pub fn take_held(&mut self) -> Vec<(oneshot::Sender<Answer>, Answer)> {
        std::mem::take(&mut self.held)
    }

    /// The id string of job `job`.
    pub fn id(&self, job: JobId) -> String {
        format_id(&self.instance, job)
    }

    /// `start-later` jobs held now.
    pub fn start_later(&self) -> usize {
        self.start_later
    }

    /// Input bytes of the `start-later` jobs held now.
    pub fn held_bytes(&self) -> usize {
        self.records
            .values()
            .filter_map(|r| r.parked.as_ref())
            .map(|q| q.input.len())
            .sum()
    }

    /// Finished jobs kept now.
    pub fn kept(&self) -> usize {
        self.finished.len()
    }

    /// Records a job just accepted.
    pub fn insert(
        &mut self,
        job: JobId,
        module: Arc<str>,
        status: JobStatus,
        timeout: Option<Duration>,
    ) {
        if status == JobStatus::StartLater {
            self.start_later += 1;
        }
        let now = self.now();
        self.records.insert(
            job,
            Record {
                module,
                status,
                created: now,
                queued_mono: now,
                started: None,
                finished: None,
                failure: None,
                output: None,
                waiters: Vec::new(),
                timeout,
                timer: None,
                child: None,
                parked: None,
                durable: false,
                order: 0,
                priority: taskmaster_proto::Priority::Normal,
                retries: 0,
            },
        );
    }

    /// Records a job read back from the store (its outcome, if it has one,
    /// kept like any other).
    pub fn insert_stored(&mut self, job: JobId, module: Arc<str>, stored: &StoredJob) {
        let at = |ms: u64| self.epoch.instant(ms);
        if stored.status == JobStatus::StartLater {
            self.start_later += 1;
        }
        let created = at(stored.created_ms);
        let finished = stored.finished_ms.map(at);
        let output = stored.output.clone();
        if let Some(out) = &output {
            self.result_bytes += out.len();
        }
        self.records.insert(
            job,
            Record {
                module,
                status: stored.status,
                created,
                queued_mono: Instant::now(),
                started: stored.started_ms.map(at),
                finished,
                failure: stored.failure.clone(),
                output,
                waiters: Vec::new(),
                timeout: stored.timeout_ms.map(Duration::from_millis),
                timer: None,
                child: None,
                parked: None,
                durable: true,
                order: stored.order,
                priority: stored.priority,
                retries: stored.retries,
            },
        );
        if let Some(at) = finished {
            // Oldest first, as they ended; the caller gives them in that order.
            self.finished.push_back((job, at));
        }
    }

    /// The stored form of a durable job, as it is now (`status` and
    /// `input` as given: the store may need to say more than the table,
    /// such as "processing" for a job only written to a child).
    pub fn stored(&self, job: JobId, status: JobStatus, input: Option<Bytes>) -> Option<StoredJob> {
        let r = self.records.get(&job)?;
        if !r.durable {
            return None;
        }
        let ms = |t: Instant| self.epoch.unix_ms(t);
        Some(StoredJob {
            module: r.module.to_string(),
            status,
            order: r.order,
            timeout_ms: r.timeout.map(|t| t.as_millis() as u64),
            created_ms: ms(r.created),
            started_ms: r
                .started
                .map(ms)
                .or_else(|| (status == JobStatus::Processing).then(|| ms(Instant::now()))),
            finished_ms: r.finished.map(ms),
            input,
            output: r.output.clone(),
            failure: r.failure.clone(),
            priority: r.priority,
            retries: r.retries,
        })
    }

    /// Durable jobs evicted since the last call.
    pub fn take_evicted(&mut self) -> Vec<JobId> {
        std::mem::take(&mut self.evicted)
    }

    /// The record of a job that has not been evicted.
    pub fn get(&self, job: JobId) -> Option<&Record> {
        self.records.get(&job)
    }

    /// The record of a job, to change it.
    pub fn get_mut(&mut self, job: JobId) -> Option<&mut Record> {
        self.records.get_mut(&job)
    }

    /// A `start-later` job joins the queue.
    pub fn set_queued(&mut self, job: JobId) {
        let now = self.now();
        if let Some(r) = self.records.get_mut(&job) {
            if r.status == JobStatus::StartLater {
                self.start_later -= 1;
            }
            r.status = JobStatus::Queued;
            r.queued_mono = now;
        }
    }

    /// A job started on `child`; returns its time limit.
    pub fn started(&mut self, job: JobId, child: ChildId) -> Option<Duration> {
        let now = self.now();
        let r = self.records.get_mut(&job)?;
        if r.status.is_finished() {
            return None;
        }
        r.status = JobStatus::Processing;
        r.started = Some(now);
        r.child = Some(child);
        r.timeout
    }

    /// A job ended: its outcome is kept, its waiters told, old outcomes
    /// evicted. `None` if the job is not in the table (refused at submit)
    /// or had already ended.
    /// `keep` false: the record goes at once (its outcome went to its
    /// submitter), unless someone waits for it.
    pub fn finish(&mut self, job: JobId, end: End, keep: bool) -> Option<Ended> {
        let now = self.now();
        let r = self.records.get_mut(&job)?;
        if r.status.is_finished() {
            return None;
        }
        if !keep && r.waiters.is_empty() {
            let r = self.records.remove(&job)?;
            if r.status == JobStatus::StartLater {
                self.start_later -= 1;
            }
            return Some(Ended {
                waited: r.started.map(|s| s.duration_since(r.queued_mono)),
                ran: r.started.map(|s| now.duration_since(s)),
                timer: r.timer,
                module: r.module.clone(),
            });
        }
        if r.status == JobStatus::StartLater {
            self.start_later -= 1;
        }
        r.finished = Some(now);
        r.parked = None;
        r.child = None;
        match end {
            End::Completed(output) => {
                r.status = JobStatus::Completed;
                let output = if output.len() < COPY_BELOW {
                    Bytes::copy_from_slice(&output)
                } else {
                    output
                };
                self.result_bytes += output.len();
                r.output = Some(output);
            }
            End::Failed(reason, message) => {
                r.status = if reason == Reason::Cancelled {
                    JobStatus::Cancelled
                } else {
                    JobStatus::Failed
                };
                r.failure = Some((reason, message));
            }
        }
        let ended = Ended {
            waited: r.started.map(|s| s.duration_since(r.queued_mono)),
            ran: r.started.map(|s| now.duration_since(s)),
            timer: r.timer.take(),
            module: r.module.clone(),
        };
        let waiters = std::mem::take(&mut r.waiters);
        if !waiters.is_empty() {
            let answer = result_answer(format_id(&self.instance, job), r);
            let hold = self.hold && r.durable;
            for w in waiters {
                if hold {
                    self.held.push((w, answer.clone()));
                } else {
                    let _ = w.send(answer.clone());
                }
            }
        }
        self.finished.push_back((job, now));
        self.evict_at(now);
        Some(ended)
    }

    /// Drops finished jobs past the count, age and byte limits, oldest
    /// first.
    pub fn evict(&mut self) {
        self.evict_at(Instant::now());
    }

    fn evict_at(&mut self, now: Instant) {
        while let Some(&(job, at)) = self.finished.front() {
            // The newest response stays even when it alone is over the
            // byte limit: whoever waits for it must be able to fetch it.
            let over = self.finished.len() > self.limits.keep
                || now.duration_since(at) > self.limits.ttl
                || (self.result_bytes > self.limits.bytes && self.finished.len() > 1);
            if !over {
                return;
            }
            self.finished.pop_front();
            if let Some(r) = self.records.get(&job) {
                self.result_bytes -= r.output.as_ref().map_or(0, Bytes::len);
                if r.durable {
                    self.evicted.push(job);
                }
                self.records.discard(&job);
            }
        }
    }

    /// Every held `start-later` job, taken out to be answered (at
    /// shutdown); their records stay until answered.
    pub fn take_parked(&mut self) -> Vec<Queued> {
        self.records
            .values_mut()
            .filter_map(|r| r.parked.take())
            .map(|q| *q)
            .collect()
    }

    /// What the table says of a job.
    pub fn view(&self, job: JobId) -> Option<JobView> {
        self.records
            .get(&job)
            .map(|r| view(self.id(job), r, self.epoch))
    }

    /// `{"id","status"}` of a job.
    pub fn job_ref(&self, job: JobId) -> Option<JobRef> {
        self.records.get(&job).map(|r| JobRef {
            id: self.id(job),
            status: r.status,
        })
    }

    /// The answer to `result`: the response, the failure, or a conflict
    /// while it has not finished.
    pub fn result(&self, job: JobId) -> Answer {
        match self.records.get(&job) {
            None => Answer::not_found(&self.id(job)),
            Some(r) => result_answer(self.id(job), r),
        }
    }

    /// Tells `tx` the job's result when it ends (at once if it has).
    pub fn add_waiter(&mut self, job: JobId, tx: oneshot::Sender<Answer>) {
        let id = self.id(job);
        match self.records.get_mut(&job) {
            None => {
                let _ = tx.send(Answer::not_found(&id));
            }
            Some(r) if r.status.is_finished() => {
                if self.hold && r.durable {
                    self.held.push((tx, result_answer(id, r)));
                } else {
                    let _ = tx.send(result_answer(id, r));
                }
            }
            Some(r) => {
                // Waiters that gave up (a client polling with short waits)
                // must not pile up on a job that never ends.
                r.waiters.retain(|w| !w.is_closed());
                r.waiters.push(tx);
            }
        }
    }

    /// Recent jobs, newest first.
    pub fn list(&self, limit: usize, status: Option<JobStatus>) -> JobList {
        // Newest first: job numbers grow, so sort them (a list is rare and
        // the table small; records moved aside come in no order).
        let mut ids: Vec<JobId> = self
            .records
            .iter()
            .filter(|(_, r)| status.is_none_or(|s| r.status == s))
            .map(|(job, _)| job)
            .collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        let jobs = ids
            .into_iter()
            .take(limit)
            .filter_map(|job| Some(view(self.id(job), self.records.get(&job)?, self.epoch)))
            .collect();
        JobList { jobs }
    }
}

fn view(id: String, r: &Record, epoch: Epoch) -> JobView {
    JobView {
        id,
        module: r.module.to_string(),
        status: r.status,
        reason: r.failure.as_ref().map(|f| f.0),
        message: r.failure.as_ref().map(|f| f.1.clone()),
        created_at: epoch.rfc3339(r.created),
        started_at: r.started.map(|t| epoch.rfc3339(t)),
        finished_at: r.finished.map(|t| epoch.rfc3339(t)),
    }
}

fn result_answer(id: String, r: &Record) -> Answer {
    match (&r.output, &r.failure) {
        (Some(output), _) => Answer {
            output: Some(output.clone()),
            ..Answer::ok(Body::Ref(JobRef {
                id,
                status: r.status,
            }))
        },
        (None, Some((reason, message))) => Answer::failed(id, r.status, *reason, message.clone()),
        (None, None) => Answer::conflict(id, r.status),
    }
}
