//! `taskmaster bench`: the load generator users run to size a pool, like
//! `redis-benchmark`. C connections, each keeping W jobs in flight, N jobs
//! of random bytes in all; every answer is checked; a summary table (or one
//! JSON object) at the end. `--spawn` measures pool growth instead;
//! `--detached` submits detached jobs (latency: submit to id) and then
//! waits for every outcome (the durable path of `--state-dir`).

use super::{print_line, ConnectArgs, EXIT_FAILED, EXIT_USAGE};
use bytes::{Bytes, BytesMut};
use clap::Args;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use taskmaster_proto::{BlockingClient, Client, ClientError, Completed};

/// Flags of `taskmaster bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    conn: ConnectArgs,
    /// Module to run.
    #[arg(long, default_value = "echo")]
    module: String,
    /// Bytes of random input per job.
    #[arg(long, default_value_t = 64, value_name = "BYTES")]
    size: usize,
    /// A fixed input instead of random bytes (e.g. `--module sleep --input 10`).
    #[arg(long, value_name = "TEXT")]
    input: Option<String>,
    /// Jobs in all.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    jobs: u64,
    /// Client connections.
    #[arg(long, default_value_t = 4, value_name = "C", value_parser = clap::value_parser!(u64).range(1..=10_000))]
    clients: u64,
    /// Jobs in flight per connection (1: submit, wait, submit).
    #[arg(long, default_value_t = 1, value_name = "W", value_parser = clap::value_parser!(u64).range(1..=16_384))]
    pipeline: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Measure pool growth: with every child busy, the time from submit to
    /// the first answer of each new child, up to pool-max.
    #[arg(long)]
    spawn: bool,
    /// Submit detached jobs: latency is submit to id; then wait for every
    /// outcome and check it.
    #[arg(long)]
    detached: bool,
    /// Closed loop on the blocking client: a thread per connection, each
    /// job a plain write and read (no event loop), as a caller without an
    /// async runtime sees it. Pipeline 1 only.
    #[arg(long, conflicts_with_all = ["spawn", "detached"])]
    blocking: bool,
}

/// The summary of a run (`--json` prints it).
#[derive(Debug, Serialize)]
pub struct Report {
    module: String,
    size: usize,
    clients: u64,
    pipeline: u64,
    jobs: u64,
    completed: u64,
    seconds: f64,
    jobs_per_sec: f64,
    mb_per_sec: f64,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    failed: u64,
    failed_by_reason: BTreeMap<String, u64>,
    wrong_answers: u64,
    /// `--detached`: seconds until every outcome was in (from the start).
    #[serde(skip_serializing_if = "Option::is_none")]
    outcomes_seconds: Option<f64>,
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    failed: BTreeMap<String, u64>,
    wrong: u64,
    /// `--detached`: ids given back, with their inputs, to fetch later.
    pending: Vec<(String, Bytes)>,
}

impl Tally {
    fn add(&mut self, t: Tally) {
        self.latencies_us.extend(t.latencies_us);
        self.wrong += t.wrong;
        for (reason, n) in t.failed {
            *self.failed.entry(reason).or_default() += n;
        }
        self.pending.extend(t.pending);
    }
}

/// A tiny xorshift generator: random payloads without a dependency.
struct Rng(u64);

impl Rng {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            chunk.copy_from_slice(&self.0.to_le_bytes()[..chunk.len()]);
        }
    }
}

fn check(module: &str, input: &[u8], done: &Completed) -> bool {
    let out = &done.output[..];
    match module {
        "echo" => out == input,
        "sha256" => out.len() == 64 && out.iter().all(|b| b.is_ascii_hexdigit()),
        "pid" | "sleep" => !out.is_empty() && out.iter().all(u8::is_ascii_digit),
        "count" => out == b"done\n",
        _ => true,
    }
}

/// Runs `taskmaster bench`.
pub async fn run(args: BenchArgs) -> ExitCode {
    let token = match args.conn.token() {
        Ok(t) => t,
        Err(code) => return code,
    };
    if args.blocking {
        if args.pipeline != 1 {
            eprintln!("taskmaster: bench --blocking runs one job at a time per connection: use --pipeline 1");
            return ExitCode::from(EXIT_USAGE);
        }
        return blocking_run(args, token).await;
    }
    let mut clients = Vec::new();
    for _ in 0..args.clients {
        match args.conn.connect_with(token.clone()).await {
            Ok(c) => clients.push(Arc::new(c)),
            Err(code) => return code,
        }
    }
    if args.spawn {
        return spawn_mode(&clients[0], args.json).await;
    }
    let args = Arc::new(args);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let progress = Progress::show(&args, &done);
    let started = Instant::now();
    let mut workers = Vec::new();
    for (c, client) in clients.iter().enumerate() {
        for w in 0..args.pipeline {
            let (client, args, next, done) =
                (client.clone(), args.clone(), next.clone(), done.clone());
            let seed = 0x9E37_79B9_7F4A_7C15 ^ ((c as u64) << 20 | w) | 1;
            workers.push(tokio::spawn(async move {
                worker(&client, &args, &next, &done, seed).await
            }));
        }
    }
    let mut tally = Tally::default();
    for w in workers {
        tally.add(w.await.expect("bench worker"));
    }
    let seconds = started.elapsed().as_secs_f64();
    let outcomes_seconds = if args.detached {
        // As many fetchers as submitters, each waiting for its share.
        let pending = std::mem::take(&mut tally.pending);
        let share = pending.len().div_ceil(workers_count(&args)).max(1);
        let mut fetchers = Vec::new();
        for (n, chunk) in pending.chunks(share).enumerate() {
            let client = clients[n % clients.len()].clone();
            let (chunk, args) = (chunk.to_vec(), args.clone());
            fetchers.push(tokio::spawn(async move {
                outcomes(&client, &args, chunk).await
            }));
        }
        for f in fetchers {
            let t = f.await.expect("bench fetcher");
            tally.wrong += t.wrong;
            for (reason, n) in t.failed {
                *tally.failed.entry(reason).or_default() += n;
            }
        }
        Some(started.elapsed().as_secs_f64())
    } else {
        None
    };
    progress.finish();
    let mut report = summarize(&args, tally, seconds);
    report.outcomes_seconds = outcomes_seconds;
    print_report(&args, &report)
}

/// Prints the summary; the exit status says whether every job passed.
fn print_report(args: &BenchArgs, report: &Report) -> ExitCode {
    if args.json {
        print_line(&serde_json::to_string(report).expect("report serializes"));
    } else {
        print_table(report);
    }
    if report.failed == 0 && report.wrong_answers == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

/// The progress bar on a terminal (none with `--json`).
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    fn show(args: &BenchArgs, done: &Arc<AtomicU64>) -> Progress {
        let bar = (!args.json && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(args.jobs);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} jobs  {per_sec}  eta {eta}",
                )
                .expect("progress template"),
            );
            bar
        });
        let ticker = bar.clone().map(|bar| {
            let done = done.clone();
            tokio::spawn(async move {
                loop {
                    bar.set_position(done.load(Ordering::Relaxed));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        });
        Progress { bar, ticker }
    }

    fn finish(self) {
        if let Some(t) = self.ticker {
            t.abort();
        }
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Each job's input: `--input`, or random bytes.
struct Inputs {
    rng: Rng,
    base: Vec<u8>,
}

impl Inputs {
    fn new(args: &BenchArgs, seed: u64) -> Inputs {
        let mut rng = Rng(seed);
        let mut base = vec![0u8; args.size];
        rng.fill(&mut base);
        Inputs { rng, base }
    }

    /// The input of the next job, while jobs are left (`taken`: job
    /// numbers handed out so far, shared by every worker).
    fn next(&mut self, args: &BenchArgs, taken: &AtomicU64) -> Option<Bytes> {
        let i = taken.fetch_add(1, Ordering::Relaxed);
        (i < args.jobs).then(|| self.make(args, i))
    }

    fn make(&mut self, args: &BenchArgs, i: u64) -> Bytes {
        match &args.input {
            Some(text) => Bytes::from(text.clone().into_bytes()),
            None => {
                // Unique per job, so an answer given to the wrong job shows.
                let mut buf = BytesMut::with_capacity(args.size);
                buf.extend_from_slice(&self.base);
                let n = args.size.min(8);
                buf[..n].copy_from_slice(&i.to_le_bytes()[..n]);
                if args.size > 8 {
                    self.rng.fill(&mut self.base[8..args.size.min(16)]);
                }
                buf.freeze()
            }
        }
    }
}

/// `--blocking`: a thread per connection, each running one job at a time
/// on a [`BlockingClient`] (plain blocking socket calls, no event loop).
async fn blocking_run(args: BenchArgs, token: Option<String>) -> ExitCode {
    let mut clients = Vec::new();
    for _ in 0..args.clients {
        match BlockingClient::connect(args.conn.connect.as_str(), token.clone()) {
            Ok(c) => clients.push(c),
            Err(e) => {
                eprintln!("taskmaster: cannot connect to {}: {e}", args.conn.connect);
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    let args = Arc::new(args);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let progress = Progress::show(&args, &done);
    let started = Instant::now();
    // Each thread sends its tally when done: waiting for them takes no
    // thread of its own (there may be none left to take).
    let (tallies, mut finished) = tokio::sync::mpsc::unbounded_channel();
    let mut running = 0;
    let mut spawn_error = None;
    for (c, client) in clients.into_iter().enumerate() {
        let (a, n, d, tx) = (args.clone(), next.clone(), done.clone(), tallies.clone());
        let seed = 0x9E37_79B9_7F4A_7C15 ^ ((c as u64) << 20) | 1;
        // A small stack: a client thread holds little, and thousands of
        // connections mean thousands of threads.
        let spawned = std::thread::Builder::new()
            .name(format!("bench-{c}"))
            .stack_size(256 * 1024)
            .spawn(move || {
                let _ = tx.send(blocking_worker(client, &a, &n, &d, seed));
            });
        match spawned {
            Ok(_) => running += 1,
            Err(e) => {
                // The threads already running take no new job.
                next.fetch_max(args.jobs, Ordering::Relaxed);
                spawn_error = Some(format!(
                    "cannot start thread {} of {}: {e}",
                    c + 1,
                    args.clients
                ));
                break;
            }
        }
    }
    drop(tallies);
    let mut tally = Tally::default();
    for _ in 0..running {
        // None: a thread died without its tally (a panic, already printed).
        let Some(t) = finished.recv().await else {
            progress.finish();
            eprintln!("taskmaster: bench --blocking: a client thread failed");
            return ExitCode::from(EXIT_FAILED);
        };
        tally.add(t);
    }
    if let Some(e) = spawn_error {
        progress.finish();
        eprintln!("taskmaster: bench --blocking: {e} (fewer --clients)");
        return ExitCode::from(EXIT_USAGE);
    }
    let seconds = started.elapsed().as_secs_f64();
    progress.finish();
    print_report(&args, &summarize(&args, tally, seconds))
}

fn blocking_worker(
    mut client: BlockingClient,
    args: &BenchArgs,
    next: &AtomicU64,
    done: &AtomicU64,
    seed: u64,
) -> Tally {
    let mut tally = Tally::default();
    let mut inputs = Inputs::new(args, seed);
    while let Some(input) = inputs.next(args, next) {
        let t0 = Instant::now();
        let result = client.submit(&args.module, input.clone(), Bytes::new());
        let us = job_done(t0, done);
        if tally.record(&args.module, &input, result, us) {
            break;
        }
    }
    tally
}

/// A job is done: its latency in microseconds since `t0`, and one more
/// for the progress bar.
fn job_done(t0: Instant, done: &AtomicU64) -> u32 {
    let us = t0.elapsed().as_micros().min(u32::MAX as u128) as u32;
    done.fetch_add(1, Ordering::Relaxed);
    us
}

async fn worker(
    client: &Client,
    args: &BenchArgs,
    next: &AtomicU64,
    done: &AtomicU64,
    seed: u64,
) -> Tally {
    let mut tally = Tally::default();
    let mut inputs = Inputs::new(args, seed);
    while let Some(input) = inputs.next(args, next) {
        let t0 = Instant::now();
        if args.detached {
            let options = taskmaster_proto::SubmitOptions::default();
            let result = client
                .submit_detached(&args.module, input.clone(), options)
                .await;
            let us = job_done(t0, done);
            match result {
                Ok(job) => {
                    tally.latencies_us.push(us);
                    tally.pending.push((job.id, input));
                }
                Err(e) => {
                    if tally.record_error(e) {
                        break;
                    }
                }
            }
            continue;
        }
        let result = match client.submit(&args.module, input.clone(), Bytes::new()) {
            Ok(job) => job.finish().await,
            Err(e) => Err(e),
        };
        let us = job_done(t0, done);
        if tally.record(&args.module, &input, result, us) {
            break;
        }
    }
    tally
}

impl Tally {
    /// Counts one job's outcome; true when the connection is gone.
    fn record(
        &mut self,
        module: &str,
        input: &[u8],
        result: Result<Completed, ClientError>,
        us: u32,
    ) -> bool {
        match result {
            Ok(answer) => {
                self.latencies_us.push(us);
                if !check(module, input, &answer) {
                    self.wrong += 1;
                }
                false
            }
            Err(e) => self.record_error(e),
        }
    }

    /// Counts a failure; true when the connection is gone.
    fn record_error(&mut self, e: ClientError) -> bool {
        match e {
            ClientError::Job(f) => {
                *self.failed.entry(f.reason.to_string()).or_default() += 1;
                false
            }
            // One key per kind, not per job: the table stays short.
            ClientError::NotFound(_) => {
                *self.failed.entry(EVICTED.into()).or_default() += 1;
                false
            }
            e => {
                let gone = matches!(e, ClientError::Disconnected);
                *self.failed.entry(format!("client: {e}")).or_default() += 1;
                gone
            }
        }
    }
}

/// `--detached`: an outcome gone before it was fetched.
const EVICTED: &str = "evicted before fetched (raise the master's --keep-results)";

fn workers_count(args: &BenchArgs) -> usize {
    (args.clients * args.pipeline) as usize
}

/// `--detached`: waits for each job's outcome and checks it.
async fn outcomes(client: &Client, args: &BenchArgs, jobs: Vec<(String, Bytes)>) -> Tally {
    use taskmaster_proto::JobResult;
    let mut tally = Tally::default();
    for (id, input) in jobs {
        loop {
            match client.result(&id, Duration::from_secs(60)).await {
                Ok(JobResult::Completed(output)) => {
                    let done = Completed {
                        job: 0,
                        id: id.clone(),
                        output,
                        context: Bytes::new(),
                    };
                    if !check(&args.module, &input, &done) {
                        tally.wrong += 1;
                    }
                }
                Ok(JobResult::Failed(f)) => {
                    *tally.failed.entry(f.reason.to_string()).or_default() += 1;
                }
                Ok(JobResult::Pending(_)) => continue,
                Err(e) => {
                    if tally.record_error(e) {
                        return tally;
                    }
                }
            }
            break;
        }
    }
    tally
}

fn percentile(sorted: &[u32], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    u64::from(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn summarize(args: &BenchArgs, mut tally: Tally, seconds: f64) -> Report {
    tally.latencies_us.sort_unstable();
    let l = &tally.latencies_us;
    let completed = l.len() as u64;
    let failed = tally.failed.values().sum();
    let size = args.input.as_ref().map_or(args.size, String::len);
    Report {
        module: args.module.clone(),
        size,
        clients: args.clients,
        pipeline: args.pipeline,
        jobs: args.jobs,
        completed,
        seconds,
        jobs_per_sec: completed as f64 / seconds,
        mb_per_sec: (completed as f64 * size as f64) / seconds / 1e6,
        p50_us: percentile(l, 50.0),
        p90_us: percentile(l, 90.0),
        p99_us: percentile(l, 99.0),
        p999_us: percentile(l, 99.9),
        max_us: l.last().map_or(0, |&v| u64::from(v)),
        failed,
        failed_by_reason: tally.failed,
        wrong_answers: tally.wrong,
        outcomes_seconds: None,
    }
}

fn print_table(r: &Report) {
    print_line(&format!("module        {} ({} bytes in)", r.module, r.size));
    print_line(&format!(
        "clients       {} x {} in flight",
        r.clients, r.pipeline
    ));
    print_line(&format!(
        "jobs          {} ({} completed)",
        r.jobs, r.completed
    ));
    print_line(&format!("seconds       {:.3}", r.seconds));
    if let Some(all) = r.outcomes_seconds {
        print_line(&format!(
            "all outcomes  {all:.3} s (detached: jobs/s and latency are submit to id)"
        ));
    }
    print_line(&format!("jobs/s        {:.0}", r.jobs_per_sec));
    print_line(&format!("MB/s          {:.2} (input bytes)", r.mb_per_sec));
    print_line(&format!(
        "latency us    p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        r.p50_us, r.p90_us, r.p99_us, r.p999_us, r.max_us
    ));
    if r.failed == 0 {
        print_line("failed        0");
    } else {
        let by: Vec<String> = r
            .failed_by_reason
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        print_line(&format!("failed        {} ({})", r.failed, by.join(", ")));
    }
    if r.wrong_answers > 0 {
        print_line(&format!("WRONG ANSWERS {}", r.wrong_answers));
    }
}

/// Growth: hold every current child with a long `sleep`, then submit one
/// probe per free slot below pool-max. Each probe is a `sleep` of
/// [`PROBE_MS`] that keeps its child busy, so every probe needs a child of its
/// own: its answer time minus the sleep is spawn-to-first-answer.
async fn spawn_mode(client: &Client, json: bool) -> ExitCode {
    const PROBE_MS: u64 = 1000;
    let fail = |msg: String| {
        eprintln!("taskmaster: bench --spawn: {msg}");
        ExitCode::from(EXIT_FAILED)
    };
    let stats = match client.stats().await {
        Ok(s) => s,
        Err(e) => return fail(e.to_string()),
    };
    let (size, max) = (stats.pool.size, stats.pool.max);
    if size >= max {
        return fail(format!(
            "the pool is already at pool-max ({max}); start the master with pool-max above pool-start"
        ));
    }
    let hold_ms = 2 * PROBE_MS + 50 * max as u64;
    let mut holds = Vec::new();
    for _ in 0..size {
        match client.submit("sleep", hold_ms.to_string(), Bytes::new()) {
            Ok(h) => holds.push(h),
            Err(e) => return fail(e.to_string()),
        }
    }
    loop {
        match client.stats().await {
            Ok(s) if s.pool.busy >= size => break,
            Ok(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            Err(e) => return fail(e.to_string()),
        }
    }
    let t0 = Instant::now();
    let mut probes = Vec::new();
    for _ in 0..max - size {
        match client.submit("sleep", PROBE_MS.to_string(), Bytes::new()) {
            Ok(p) => probes.push(p),
            Err(e) => return fail(e.to_string()),
        }
    }
    let mut times = Vec::new();
    let mut new_pids = std::collections::BTreeSet::new();
    for p in probes {
        match p.finish().await {
            Ok(done) => {
                let us = t0.elapsed().as_micros() as u64;
                times.push(us.saturating_sub(PROBE_MS * 1000) as u32);
                new_pids.insert(done.output);
            }
            Err(e) => return fail(format!("probe job: {e}")),
        }
    }
    for h in holds {
        if let Ok(done) = h.finish().await {
            new_pids.remove(&done.output);
        }
    }
    times.sort_unstable();
    // The k-th answer waited for k children spawned at once on 2 cores; the
    // first is the single-child figure.
    let first = times.first().copied().unwrap_or(0);
    let last = times.last().copied().unwrap_or(0);
    let median = percentile(&times, 50.0);
    if json {
        let v = serde_json::json!({
            "spawned": new_pids.len(), "first_answer_us": first,
            "p50_us": median, "all_answered_us": last,
        });
        print_line(&v.to_string());
    } else {
        print_line(&format!(
            "children spawned    {} (pool {size} -> {max})",
            new_pids.len()
        ));
        print_line(&format!(
            "first new answer    {first} us after submit (probe sleep subtracted)"
        ));
        print_line(&format!("median              {median} us"));
        print_line(&format!("all answered        {last} us"));
    }
    ExitCode::SUCCESS
}
