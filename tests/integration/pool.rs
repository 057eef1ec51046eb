//! Dispatch, growth to `pool-max`, the queue, `overload`, many clients,
//! pipelining, parts.

use bytes::Bytes;
use std::collections::HashSet;
use taskmaster_tests::{wait_stats, ClientError, JobEvent, Master, Reason};

#[tokio::test]
async fn prespawns_pool_start_children() {
    let mut master = Master::ready(&["--pool-start", "3", "--pool-max", "5"]);
    let pids = master.children();
    assert_eq!(pids.len(), 3, "children of the master: {pids:?}");
    for pid in &pids {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
        assert!(
            comm.starts_with("taskmaster-hand"),
            "child {pid} is {comm:?}"
        );
    }
    let stats = master.client().await.stats().await.unwrap();
    assert_eq!(
        (stats.pool.size, stats.pool.idle, stats.pool.start),
        (3, 3, 3)
    );
    // The pid module answers from one of those children.
    let pid = master.client().await.do_task("pid", "").await.unwrap();
    let pid: u32 = std::str::from_utf8(&pid).unwrap().parse().unwrap();
    assert!(pids.contains(&pid));
}

#[tokio::test]
async fn grows_to_pool_max_and_never_past_it() {
    let mut master = Master::ready(&["--pool-start", "1", "--pool-max", "3", "--job-max", "10"]);
    let client = master.client().await;
    let jobs: Vec<_> = (0..8)
        .map(|_| client.submit("sleep", "300", Bytes::new()).unwrap())
        .collect();
    let mut pids = HashSet::new();
    let mut max_seen = 0;
    for job in jobs {
        max_seen = max_seen.max(master.children().len());
        let out = job.finish().await.unwrap().output;
        pids.insert(String::from_utf8(out.to_vec()).unwrap());
    }
    assert_eq!(pids.len(), 3, "jobs ran on {pids:?}");
    assert!(max_seen <= 3, "saw {max_seen} children");
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.children.spawned, 3);
    assert_eq!(stats.jobs.completed, 8);
}

#[tokio::test]
async fn queued_jobs_all_complete() {
    let master = Master::ready(&["--pool-start", "2", "--pool-max", "2", "--job-max", "30"]);
    let client = master.client().await;
    let jobs: Vec<_> = (0..30)
        .map(|_| client.submit("sleep", "20", Bytes::new()).unwrap())
        .collect();
    for job in jobs {
        job.finish().await.expect("queued job completes");
    }
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.jobs.completed, 30);
    assert_eq!(stats.queue.len, 0);
}

#[tokio::test]
async fn full_queue_answers_overload_at_once() {
    let master = Master::ready(&["--pool-start", "1", "--pool-max", "1", "--job-max", "1"]);
    let client = master.client().await;
    let running = client.submit("sleep", "5000", Bytes::new()).unwrap();
    let queued = client.submit("echo", "queued", Bytes::new()).unwrap();
    wait_stats(&client, "1 busy, 1 queued", |s| {
        s.pool.busy == 1 && s.queue.len == 1
    })
    .await;
    let refused = client.submit("echo", "one more", Bytes::new()).unwrap();
    match refused.finish().await {
        Err(ClientError::Job(f)) => {
            assert_eq!(f.reason, Reason::Overload);
            // A refused job has an id (for logs and the failure JSON) but
            // is not kept in the job table.
            assert!(f.job > 0);
            assert!(matches!(
                client.status(&f.id).await,
                Err(ClientError::NotFound(_))
            ));
        }
        other => panic!("expected overload, got {other:?}"),
    }
    // The refusal came while the first job was still running.
    let stats = client.stats().await.unwrap();
    assert_eq!((stats.jobs.completed, stats.pool.busy), (0, 1));
    assert_eq!(stats.jobs.overload, 1);
    drop((running, queued));
}

#[tokio::test]
async fn sixteen_clients_get_exactly_their_own_answers() {
    let master = Master::ready(&["--pool-start", "4", "--pool-max", "4", "--job-max", "10000"]);
    let mut tasks = Vec::new();
    for c in 0..16u32 {
        let client = master.client().await;
        tasks.push(tokio::spawn(async move {
            let jobs: Vec<_> = (0..200u32)
                .map(|j| {
                    let input = format!("client {c} job {j}");
                    let ctx = format!("ctx {c}/{j}");
                    (
                        input.clone(),
                        ctx.clone(),
                        client.submit("echo", input, ctx).unwrap(),
                    )
                })
                .collect();
            for (input, ctx, job) in jobs {
                let done = job.finish().await.unwrap();
                assert_eq!(done.output, input.as_bytes());
                assert_eq!(done.context, ctx.as_bytes());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = master.client().await.stats().await.unwrap();
    assert_eq!(stats.jobs.completed, 16 * 200);
    assert_eq!(stats.jobs.failed, 0);
}

#[tokio::test]
async fn one_connection_with_1000_pipelined_jobs() {
    let master = Master::ready(&["--pool-start", "4", "--pool-max", "4", "--job-max", "1000"]);
    let client = master.client().await;
    let jobs: Vec<_> = (0..1000u32)
        .map(|i| {
            let input = Bytes::from(i.to_le_bytes().repeat(1 + (i as usize % 17)));
            (
                input.clone(),
                client.submit("sha256", input, Bytes::new()).unwrap(),
            )
        })
        .collect();
    let mut tags = HashSet::new();
    for (input, job) in jobs {
        assert!(tags.insert(job.tag()));
        let out = job.finish().await.unwrap().output;
        assert_eq!(out.len(), 64);
        // Identical inputs give identical digests; different ones differ.
        let again = client.do_task("sha256", input).await.unwrap();
        assert_eq!(out, again);
    }
}

#[tokio::test]
async fn parts_arrive_in_order_then_the_response() {
    let master = Master::ready(&["--pool-start", "1"]);
    let client = master.client().await;
    let mut job = client.submit("count", "50", Bytes::new()).unwrap();
    for i in 1..=50 {
        match job.next_event().await.unwrap() {
            JobEvent::Part(p) => assert_eq!(p, format!("{i}\n").as_bytes()),
            other => panic!("expected part {i}, got {other:?}"),
        }
    }
    match job.next_event().await.unwrap() {
        JobEvent::Completed(done) => assert_eq!(done.output, "done\n".as_bytes()),
        other => panic!("expected the response, got {other:?}"),
    }
}

#[tokio::test]
async fn standard_modules_answer_as_specified() {
    let master = Master::ready(&["--pool-start", "1"]);
    let client = master.client().await;
    assert_eq!(
        client.do_task("echo", "héllo\0").await.unwrap(),
        "héllo\0".as_bytes()
    );
    assert_eq!(
        client.do_task("sha256", "abc").await.unwrap(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".as_bytes()
    );
    let big = Bytes::from(vec![7u8; 4 * 1024 * 1024]);
    assert_eq!(client.do_task("echo", big.clone()).await.unwrap(), big);
    match client.do_task("sleep", "soon").await {
        Err(ClientError::Job(f)) => assert_eq!(f.reason, Reason::Failed),
        other => panic!("{other:?}"),
    }
    let typed: Vec<u32> = client.do_typed("echo", &vec![1u32, 2, 3]).await.unwrap();
    assert_eq!(typed, vec![1, 2, 3]);
}

/// `--prefetch auto` batches quick jobs into busy children
/// but never puts a quick job behind a long one: with one child sleeping
/// a second, a flood of echoes keeps flowing through the other child, none
/// of them waiting for the sleeper.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_prefetch_never_queues_a_quick_job_behind_a_long_one() {
    let master = Master::ready(&[
        "--pool-start",
        "2",
        "--pool-max",
        "2",
        "--job-max",
        "10000",
        "--prefetch",
        "auto",
    ]);
    let client = master.client().await;
    // The pool learns that echo is quick.
    for _ in 0..20 {
        client.do_task("echo", "x").await.unwrap();
    }
    let sleeper = master.client().await;
    let long = tokio::spawn(async move { sleeper.do_task("sleep", "1000").await });
    wait_stats(&client, "the sleep job running", |s| s.pool.busy == 1).await;
    let started = std::time::Instant::now();
    let mut floods = Vec::new();
    for _ in 0..4 {
        let c = master.client().await;
        floods.push(tokio::spawn(async move {
            let mut jobs = Vec::new();
            for i in 0..50 {
                jobs.push(c.submit("echo", format!("{i}"), Bytes::new()).unwrap());
            }
            let mut worst = std::time::Duration::ZERO;
            for (i, job) in jobs.into_iter().enumerate() {
                let done = job.finish().await.unwrap();
                assert_eq!(done.output, format!("{i}").as_bytes());
                worst = worst.max(started.elapsed());
            }
            worst
        }));
    }
    let mut worst = std::time::Duration::ZERO;
    for f in floods {
        worst = worst.max(f.await.unwrap());
    }
    assert!(
        worst < std::time::Duration::from_millis(700),
        "200 echoes took {worst:?}: some waited behind the 1 s sleep"
    );
    assert!(long.await.unwrap().is_ok());
}

/// `--max-jobs-per-child` stays exact under the default `--prefetch auto`
/// with jobs in flight together (windows and coalescing included): no
/// child runs more than its limit, and every child that retired ran
/// exactly that many.
#[tokio::test]
async fn auto_prefetch_keeps_max_jobs_per_child_exact() {
    let master = Master::ready(&[
        "--pool-start",
        "2",
        "--pool-max",
        "2",
        "--max-jobs-per-child",
        "5",
        "--job-max",
        "1000",
    ]);
    let client = master.client().await;
    let mut pids: Vec<u32> = Vec::new();
    // The pool learns that `pid` is quick, then gets 80 at once.
    for _ in 0..4 {
        pids.push(pid_answer(&client.do_task("pid", "").await.unwrap()));
    }
    let jobs: Vec<_> = (0..80)
        .map(|_| client.submit("pid", "", Bytes::new()).unwrap())
        .collect();
    for job in jobs {
        pids.push(pid_answer(&job.finish().await.unwrap().output));
    }
    let mut per_pid: std::collections::BTreeMap<u32, usize> = Default::default();
    for p in &pids {
        *per_pid.entry(*p).or_default() += 1;
    }
    assert!(
        per_pid.values().all(|&n| n <= 5),
        "a child ran more than 5 jobs: {per_pid:?}"
    );
    // 84 jobs at 5 per child: at least 17 children; all but the (at most
    // two) still running ran exactly 5.
    let short = per_pid.values().filter(|&&n| n < 5).count();
    assert!(short <= 2, "children that ran fewer than 5: {per_pid:?}");
}

fn pid_answer(out: &[u8]) -> u32 {
    String::from_utf8_lossy(out)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("a pid, got {out:?}"))
}
