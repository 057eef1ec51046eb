//! Prometheus metrics (`GET /metrics`), built with the `prometheus-client`
//! crate. Counters and histograms are bumped by the pool actor as things
//! happen (atomics, no locks around pool state); the gauges are set from a
//! stats snapshot at scrape time, so the hot path never touches them.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use taskmaster_proto::{Reason, Stats};

type Labels = Vec<(&'static str, &'static str)>;
/// An agent's name as a label (names are the agents' own, so owned).
type AgentLabels = Vec<(&'static str, String)>;

/// Every metric the master exports.
pub struct Metrics {
    registry: Registry,
    /// Jobs submitted (accepted or refused).
    pub submitted: Counter,
    /// Jobs completed.
    pub completed: Counter,
    /// Jobs that failed (any reason but `cancelled`).
    pub failed: Counter,
    /// Jobs cancelled.
    pub cancelled: Counter,
    failed_by_reason: [Counter; Reason::ALL.len()],
    /// Child processes spawned.
    pub spawned: Counter,
    /// Child processes exited and reaped.
    pub exited: Counter,
    /// Children that died or were refused before they were ready.
    pub startup_failures: Counter,
    /// Seconds from accepted to started.
    pub queue_wait: Histogram,
    /// Seconds from started to finished.
    pub run_time: Histogram,
    gauges: Gauges,
}

struct Gauges {
    pool_start: Gauge,
    pool_max: Gauge,
    pool_size: Gauge,
    pool_busy: Gauge,
    pool_idle: Gauge,
    pool_starting: Gauge,
    queue_length: Gauge,
    queue_max: Gauge,
    start_later: Gauge,
    kept: Gauge,
    agent_slots: Family<AgentLabels, Gauge>,
    agent_children: Family<AgentLabels, Gauge>,
    agent_busy: Family<AgentLabels, Gauge>,
    uptime: Gauge<f64, AtomicU64>,
}

/// Buckets from 50 µs to 60 s: job times span short echo hops to
/// long-running work. Written out so the `le` labels read cleanly.
fn buckets() -> impl Iterator<Item = f64> {
    [
        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
        0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ]
    .into_iter()
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `taskmaster_` prefix.
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("taskmaster");
        let submitted = Counter::default();
        r.register(
            "jobs_submitted",
            "Jobs submitted, accepted or refused",
            submitted.clone(),
        );
        let finished = Family::<Labels, Counter>::default();
        r.register(
            "jobs_finished",
            "Jobs ended, by outcome (completed, failed, cancelled)",
            finished.clone(),
        );
        let outcome = |o: &'static str| finished.get_or_create(&vec![("outcome", o)]).clone();
        let (completed, failed, cancelled) = (
            outcome("completed"),
            outcome("failed"),
            outcome("cancelled"),
        );
        let by_reason = Family::<Labels, Counter>::default();
        r.register(
            "jobs_failed",
            "Failure answers by reason word (refusals and cancellations included)",
            by_reason.clone(),
        );
        let failed_by_reason = Reason::ALL.map(|reason| {
            by_reason
                .get_or_create(&vec![("reason", reason.as_str())])
                .clone()
        });
        let spawned = Counter::default();
        r.register(
            "children_spawned",
            "Child processes spawned",
            spawned.clone(),
        );
        let exited = Counter::default();
        r.register(
            "children_exited",
            "Child processes exited and reaped",
            exited.clone(),
        );
        let startup_failures = Counter::default();
        r.register(
            "child_startup_failures",
            "Children that died or were refused before they were ready",
            startup_failures.clone(),
        );
        let queue_wait = Histogram::new(buckets());
        r.register(
            "job_queue_wait_seconds",
            "Time from accepted to started",
            queue_wait.clone(),
        );
        let run_time = Histogram::new(buckets());
        r.register(
            "job_run_seconds",
            "Time from started to finished",
            run_time.clone(),
        );
        let mut gauge = |name: &str, help: &str| {
            let g = Gauge::default();
            r.register(name, help, g.clone());
            g
        };
        let gauges = Gauges {
            pool_start: gauge("pool_start", "--pool-start"),
            pool_max: gauge("pool_max", "--pool-max"),
            pool_size: gauge("pool_size", "Children alive"),
            pool_busy: gauge("pool_busy", "Children running a job"),
            pool_idle: gauge("pool_idle", "Ready children without a job"),
            pool_starting: gauge("pool_starting", "Children spawned but not ready"),
            queue_length: gauge("queue_length", "Jobs waiting for a child"),
            queue_max: gauge("queue_max", "--job-max"),
            start_later: gauge("jobs_start_later", "start-later jobs held"),
            kept: gauge("jobs_kept", "Finished jobs kept in the job table"),
            agent_slots: Family::default(),
            agent_children: Family::default(),
            agent_busy: Family::default(),
            uptime: Gauge::default(),
        };
        r.register(
            "agent_slots",
            "Slots a connected agent offers (--slots)",
            gauges.agent_slots.clone(),
        );
        r.register(
            "agent_children",
            "A connected agent's children in the pool",
            gauges.agent_children.clone(),
        );
        r.register(
            "agent_busy",
            "A connected agent's children running a job",
            gauges.agent_busy.clone(),
        );
        r.register(
            "uptime_seconds",
            "Seconds since the master started",
            gauges.uptime.clone(),
        );
        Metrics {
            registry: r,
            submitted,
            completed,
            failed,
            cancelled,
            failed_by_reason,
            spawned,
            exited,
            startup_failures,
            queue_wait,
            run_time,
            gauges,
        }
    }

    /// Counts a failure answer with `reason`.
    pub fn failure(&self, reason: Reason) {
        let i = Reason::ALL
            .iter()
            .position(|&r| r == reason)
            .expect("a reason");
        self.failed_by_reason[i].inc();
        if reason == Reason::Cancelled {
            self.cancelled.inc();
        } else {
            self.failed.inc();
        }
    }

    /// The text exposition, gauges set from `stats`.
    pub fn render(&self, stats: &Stats) -> String {
        let g = &self.gauges;
        let set = |gauge: &Gauge, v: usize| {
            gauge.set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        set(&g.pool_start, stats.pool.start);
        set(&g.pool_max, stats.pool.max);
        set(&g.pool_size, stats.pool.size);
        set(&g.pool_busy, stats.pool.busy);
        set(&g.pool_idle, stats.pool.idle);
        set(&g.pool_starting, stats.pool.starting);
        set(&g.queue_length, stats.queue.len);
        set(&g.queue_max, stats.queue.max);
        set(&g.start_later, stats.jobs.start_later);
        set(&g.kept, stats.jobs.kept);
        g.uptime.set(stats.uptime_secs);
        // Only the agents connected now: one that left leaves no series.
        for family in [&g.agent_slots, &g.agent_children, &g.agent_busy] {
            family.clear();
        }
        for a in &stats.agents {
            let labels = vec![("agent", a.name.clone())];
            g.agent_slots.get_or_create(&labels).set(i64::from(a.slots));
            set(&g.agent_children.get_or_create(&labels), a.children);
            set(&g.agent_busy.get_or_create(&labels), a.busy);
        }
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family() {
        let m = Metrics::new();
        m.submitted.inc();
        m.completed.inc();
        m.failure(Reason::Overload);
        m.failure(Reason::Cancelled);
        m.queue_wait.observe(0.001);
        let text = m.render(&Stats::default());
        for want in [
            "taskmaster_jobs_submitted_total 1",
            "taskmaster_jobs_finished_total{outcome=\"completed\"} 1",
            "taskmaster_jobs_finished_total{outcome=\"cancelled\"} 1",
            "taskmaster_jobs_failed_total{reason=\"overload\"} 1",
            "taskmaster_jobs_failed_total{reason=\"unknown-module\"} 0",
            "taskmaster_job_queue_wait_seconds_count 1",
            "taskmaster_pool_size 0",
            "taskmaster_uptime_seconds",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }
}
