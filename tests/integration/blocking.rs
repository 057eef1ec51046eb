//! `BlockingClient` against a real master: answers and their ids, parts,
//! failure reasons, limits checked before sending, a refused token, and a
//! master killed while a call waits.

use nix::sys::signal::Signal;
use std::time::{Duration, Instant};
use taskmaster_proto::BlockingClient;
use taskmaster_tests::{pid_alive, wait_stats, wait_until, ClientError, Master, Reason};

fn connect(master: &Master) -> BlockingClient {
    BlockingClient::connect(master.addr.as_str(), None).expect("connect to master")
}

fn reason(result: Result<taskmaster_proto::Completed, ClientError>) -> Reason {
    match result {
        Err(ClientError::Job(f)) => f.reason,
        other => panic!("expected a job failure, got {other:?}"),
    }
}

#[test]
fn blocking_calls_answer_in_order_with_ids_parts_and_reasons() {
    let master = Master::ready(&["--pool-start", "1", "--pool-max", "1"]);
    let mut client = connect(&master);
    let instance = client.instance().to_owned();
    let mut numbers = Vec::new();
    for i in 0..50u32 {
        let input = format!("job {i}");
        let done = client
            .submit("echo", input.clone(), format!("ctx {i}"))
            .expect("echo completes");
        assert_eq!(done.output, input.as_bytes());
        assert_eq!(done.context, format!("ctx {i}").as_bytes());
        assert_eq!(done.id, format!("{instance}-{}", done.job));
        numbers.push(done.job);
    }
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");

    // Parts come to the callback, in order, before the answer.
    let mut parts = Vec::new();
    let done = client
        .submit_each("count", "3", "", Default::default(), |p| {
            parts.push(String::from_utf8(p.to_vec()).unwrap())
        })
        .expect("count completes");
    assert_eq!(parts, ["1\n", "2\n", "3\n"]);
    assert_eq!(done.output, "done\n".as_bytes());

    // Failures carry SPEC reason words; the connection stays usable.
    assert_eq!(
        reason(client.submit("no-such-module", "x", "")),
        Reason::UnknownModule
    );
    assert_eq!(reason(client.submit("fail", "boom", "")), Reason::Failed);
    let options = taskmaster_proto::SubmitOptions {
        timeout_ms: Some(200),
        ..Default::default()
    };
    let f = client.submit_each("sleep", "5000", "", options, |_| {});
    assert_eq!(reason(f), Reason::Timeout);

    // Over the limits: refused before anything is sent.
    let big = vec![0u8; client.max_payload() + 1];
    assert!(matches!(
        client.submit("echo", big, ""),
        Err(ClientError::TooLarge { .. })
    ));
    let context = vec![0u8; taskmaster_proto::codec::MAX_CONTEXT + 1];
    assert!(matches!(
        client.submit("echo", "x", context),
        Err(ClientError::TooLarge { .. })
    ));
    assert_eq!(
        client.submit("echo", "after", "").unwrap().output,
        "after".as_bytes()
    );
}

#[test]
fn a_wrong_token_is_refused() {
    let dir = std::env::temp_dir().join(format!("taskmaster-blocking-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, "right\n").unwrap();
    let master = Master::ready(&[
        "--pool-start",
        "1",
        "--token-file",
        token_file.to_str().unwrap(),
    ]);
    match BlockingClient::connect(master.addr.as_str(), Some("wrong".into())) {
        Err(ClientError::Refused(m)) => assert_eq!(m, "bad or missing client token"),
        Err(other) => panic!("expected a refusal, got {other:?}"),
        Ok(_) => panic!("expected a refusal, got a welcome"),
    }
    let mut client = BlockingClient::connect(master.addr.as_str(), Some("right".into()))
        .expect("the right token is welcome");
    assert_eq!(
        client.submit("echo", "ok", "").unwrap().output,
        "ok".as_bytes()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_call_waiting_on_a_killed_master_returns_disconnected() {
    let mut master = Master::ready(&["--pool-start", "1", "--pool-max", "1"]);
    let children = master.children();
    let addr = master.addr.clone();
    let waiting = std::thread::spawn(move || {
        let mut client = BlockingClient::connect(addr.as_str(), None).expect("connect");
        let started = Instant::now();
        (client.submit("sleep", "60000", ""), started.elapsed())
    });
    // The call waits once the sleep is running.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(async {
            let stats = master.client().await;
            wait_stats(&stats, "the sleep running", |s| s.pool.busy == 1).await;
        });
    assert!(!waiting.is_finished());
    master.signal(Signal::SIGKILL);
    let (result, waited) = waiting.join().expect("the waiting thread");
    assert!(
        matches!(result, Err(ClientError::Disconnected)),
        "expected disconnected, got {result:?}"
    );
    assert!(waited < Duration::from_secs(30), "waited {waited:?}");
    let _ = master.wait_exit(Duration::from_secs(5));
    wait_until("every child gone", Duration::from_secs(5), || {
        children.iter().all(|&p| !pid_alive(p))
    });
}
