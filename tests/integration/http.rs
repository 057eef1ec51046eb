//! The HTTP/JSON API (`--http`): submit with and without `wait`, the job
//! table through `GET /jobs/{id}` and `/result`, start-later, cancel,
//! failure and error mapping, big bodies, many clients, eviction, memory,
//! health/stats/metrics, time limits, and conformance to docs/openapi.yaml.

use bytes::Bytes;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use taskmaster_tests::{
    http, pid_alive, vm_rss_kib, wait_stats, wait_until, wait_until_async, HttpAnswer, Master,
};

/// `^[0-9a-f]{12}-[1-9][0-9]*$` (design3: job ids).
fn is_job_id(id: &str) -> bool {
    let Some((instance, number)) = id.split_once('-') else {
        return false;
    };
    instance.len() == 12
        && instance
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && !number.is_empty()
        && !number.starts_with('0')
        && number.bytes().all(|b| b.is_ascii_digit())
}

/// RFC 3339 UTC with milliseconds: `2026-11-23T10:00:00.123Z`.
fn is_timestamp(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'.',
            23 => c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

async fn get(m: &Master, path: &str) -> HttpAnswer {
    http("GET", &m.url(path), Bytes::new()).await
}

async fn post(m: &Master, path: &str, body: impl Into<Bytes>) -> HttpAnswer {
    http("POST", &m.url(path), body).await
}

async fn delete(m: &Master, path: &str) -> HttpAnswer {
    http("DELETE", &m.url(path), Bytes::new()).await
}

fn is_json(a: &HttpAnswer) -> bool {
    a.header("content-type")
        .is_some_and(|t| t.starts_with("application/json"))
}

/// Asserts a `{"error": "..."}` answer with this status.
fn assert_error(a: &HttpAnswer, status: u16, what: &str) {
    assert_eq!(a.status, status, "{what}: {}", a.text());
    assert!(
        is_json(a),
        "{what}: content-type {:?}",
        a.header("content-type")
    );
    let v = a.json();
    let obj = v.as_object().expect("an object");
    assert_eq!(obj.len(), 1, "{what}: only \"error\": {v}");
    let msg = v["error"].as_str().unwrap_or_default();
    assert!(!msg.is_empty(), "{what}: error text: {v}");
}

/// Asserts a failure answer (status code, `{"id","status","reason","message"}`)
/// and returns its JSON.
fn assert_failure(a: &HttpAnswer, code: u16, status: &str, reason: &str) -> Value {
    assert_eq!(a.status, code, "{}", a.text());
    assert!(is_json(a));
    let v = a.json();
    let mut keys: Vec<_> = v.as_object().expect("object").keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["id", "message", "reason", "status"], "{v}");
    assert!(is_job_id(v["id"].as_str().unwrap()), "{v}");
    assert_eq!(
        (v["status"].as_str(), v["reason"].as_str()),
        (Some(status), Some(reason)),
        "{v}"
    );
    v
}

/// Submits without `wait`; asserts 202 `{"id","status"}` with the id
/// headers; returns (id, status).
async fn submit(m: &Master, query: &str, body: impl Into<Bytes>) -> (String, String) {
    let a = post(m, query, body).await;
    assert_eq!(a.status, 202, "{query}: {}", a.text());
    let v = a.json();
    assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
    let id = v["id"].as_str().expect("id").to_owned();
    assert!(is_job_id(&id), "{id}");
    assert_eq!(a.header("x-job-id"), Some(id.as_str()));
    assert_eq!(a.header("location"), Some(format!("/jobs/{id}").as_str()));
    (id, v["status"].as_str().expect("status").to_owned())
}

/// `GET /jobs/{id}` (must be 200): the JobView.
async fn view(m: &Master, id: &str) -> Value {
    let a = get(m, &format!("/jobs/{id}")).await;
    assert_eq!(a.status, 200, "GET /jobs/{id}: {}", a.text());
    let v = a.json();
    assert_eq!(v["id"], id);
    v
}

async fn status_of(m: &Master, id: &str) -> String {
    view(m, id).await["status"].as_str().unwrap().to_owned()
}

async fn wait_status(m: &Master, id: &str, want: &str) {
    wait_until_async(
        &format!("job {id} {want}"),
        Duration::from_secs(15),
        || async { status_of(m, id).await == want },
    )
    .await;
}

async fn stats(m: &Master) -> Value {
    let a = get(m, "/stats").await;
    assert_eq!(a.status, 200);
    a.json()
}

#[tokio::test]
async fn sync_submit_answers_the_bytes_and_records_the_job() {
    let m = Master::ready_http(&["--pool-start", "1"]);
    let input = Bytes::from_static(b"hello\0\xff world");
    let a = post(&m, "/jobs/echo?wait=10", input.clone()).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.body, input);
    assert_eq!(a.header("content-type"), Some("application/octet-stream"));
    let id = a.header("x-job-id").expect("X-Job-Id").to_owned();
    assert!(is_job_id(&id), "{id}");

    let v = view(&m, &id).await;
    assert_eq!(
        (v["module"].as_str(), v["status"].as_str()),
        (Some("echo"), Some("completed"))
    );
    let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "created_at",
            "finished_at",
            "id",
            "module",
            "started_at",
            "status"
        ],
        "no reason/message on a completed job: {v}"
    );
    let times: Vec<&str> = ["created_at", "started_at", "finished_at"]
        .iter()
        .map(|k| v[k].as_str().unwrap())
        .collect();
    for t in &times {
        assert!(is_timestamp(t), "not RFC 3339 UTC with ms: {t}");
    }
    assert!(times[0] <= times[1] && times[1] <= times[2], "{times:?}");
    // The result is kept.
    let r = get(&m, &format!("/jobs/{id}/result")).await;
    assert_eq!((r.status, &r.body), (200, &input));
    assert_eq!(r.header("x-job-id"), Some(id.as_str()));
}

#[tokio::test]
async fn async_submit_goes_queued_processing_completed() {
    let mut m = Master::ready_http(&["--pool-start", "1", "--pool-max", "1"]);
    let child = m.children();
    let (blocker, _) = submit(&m, "/jobs/sleep", "600").await;
    wait_status(&m, &blocker, "processing").await;

    let (id, first) = submit(&m, "/jobs/sleep", "300").await;
    assert_eq!(first, "queued");
    let pending = get(&m, &format!("/jobs/{id}/result")).await;
    assert_eq!(pending.status, 409, "{}", pending.text());
    assert_eq!(pending.json(), json!({"id": id, "status": "queued"}));
    assert!(view(&m, &id).await.get("started_at").is_none());

    let mut seen = vec![first];
    let mut processing_409 = false;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = status_of(&m, &id).await;
        if seen.last() != Some(&now) {
            seen.push(now.clone());
        }
        if now == "completed" {
            break;
        }
        if now == "processing" && !processing_409 {
            let r = get(&m, &format!("/jobs/{id}/result")).await;
            // It may have just finished; otherwise 409 processing.
            if r.status == 409 {
                assert_eq!(r.json(), json!({"id": id, "status": "processing"}));
                processing_409 = true;
            }
        }
        assert!(
            Instant::now() < deadline,
            "job {id} still {now}; seen {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen, ["queued", "processing", "completed"]);
    assert!(processing_409, "saw result 409 while processing");
    let r = get(&m, &format!("/jobs/{id}/result")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.text(),
        child[0].to_string(),
        "the sleep module answers its pid"
    );
    assert_eq!(status_of(&m, &blocker).await, "completed");
}

#[tokio::test]
async fn wait_ends_with_the_job_or_answers_202_at_the_deadline() {
    let m = Master::ready_http(&["--pool-start", "1"]);
    let t = Instant::now();
    let a = post(&m, "/jobs/sleep?wait=30", "200").await;
    let took = t.elapsed();
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(5),
        "wait=30 on a 200 ms job took {took:?}"
    );

    let t = Instant::now();
    let a = post(&m, "/jobs/sleep?wait=0.3", "3000").await;
    let took = t.elapsed();
    assert_eq!(a.status, 202, "{}", a.text());
    let id = a.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(a.json(), json!({"id": id, "status": "processing"}));
    assert_eq!(a.header("x-job-id"), Some(id.as_str()));
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "wait=0.3 took {took:?}"
    );

    // result?wait= the same way: 409 at its deadline, 200 when it ends.
    let t = Instant::now();
    let r = get(&m, &format!("/jobs/{id}/result?wait=0.2")).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.json(), json!({"id": id, "status": "processing"}));
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    let t = Instant::now();
    let r = get(&m, &format!("/jobs/{id}/result?wait=30")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[tokio::test]
async fn start_later_runs_only_when_started() {
    let m = Master::ready_http(&["--pool-start", "1"]);
    let (id, st) = submit(&m, "/jobs/echo?start_later=true", "later").await;
    assert_eq!(st, "start-later");
    assert_eq!(stats(&m).await["jobs"]["start_later"], 1);
    // The idle pool runs another job meanwhile; this one stays held.
    let other = post(&m, "/jobs/echo?wait=10", "other").await;
    assert_eq!((other.status, other.text().as_str()), (200, "other"));
    let v = view(&m, &id).await;
    assert_eq!(v["status"], "start-later");
    assert!(v.get("started_at").is_none(), "{v}");
    let r = get(&m, &format!("/jobs/{id}/result")).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.json(), json!({"id": id, "status": "start-later"}));

    let s = post(&m, &format!("/jobs/{id}/start"), Bytes::new()).await;
    assert_eq!(s.status, 200, "{}", s.text());
    assert_eq!(s.json(), json!({"id": id, "status": "queued"}));
    let r = get(&m, &format!("/jobs/{id}/result?wait=10")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "later"));
    assert_eq!(stats(&m).await["jobs"]["start_later"], 0);

    let again = post(&m, &format!("/jobs/{id}/start"), Bytes::new()).await;
    assert_eq!(again.status, 409);
    assert_eq!(again.json(), json!({"id": id, "status": "completed"}));
    // A job that never was start-later cannot be started either.
    let done = post(&m, "/jobs/echo?wait=10", "x").await;
    let done_id = done.header("x-job-id").unwrap();
    let s = post(&m, &format!("/jobs/{done_id}/start"), Bytes::new()).await;
    assert_eq!(s.status, 409);
    // start_later with wait is a wait like any other (SPEC 6): nobody
    // starts the job, so at the deadline it is 202 and still held...
    let t = Instant::now();
    let held = post(&m, "/jobs/echo?start_later=true&wait=0.3", "x").await;
    assert_eq!(held.status, 202, "{}", held.text());
    assert_eq!(held.json()["status"], "start-later");
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    // ...and started by another client within the wait, it is 200 with
    // the response.
    let waiting = tokio::spawn({
        let url = m.url("/jobs/echo?start_later=true&wait=30");
        async move { http("POST", &url, "started in time").await }
    });
    let before = held.json()["id"].clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    let id = loop {
        let list = get(&m, "/jobs?status=start-later&limit=1").await.json();
        match list["jobs"][0]["id"].as_str() {
            Some(newest) if before != newest => break newest.to_owned(),
            _ => assert!(Instant::now() < deadline, "the held job is not listed"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let s = post(&m, &format!("/jobs/{id}/start"), Bytes::new()).await;
    assert_eq!(s.status, 200, "{}", s.text());
    let done = waiting.await.unwrap();
    assert_eq!(
        (done.status, done.text().as_str(), done.header("x-job-id")),
        (200, "started in time", Some(id.as_str()))
    );
}

#[tokio::test]
async fn cancel_a_queued_job_answers_its_socket_waiter_cancelled() {
    let mut m = Master::ready_http(&["--pool-start", "1", "--pool-max", "1"]);
    let child = m.children()[0];
    let client = m.client().await;
    let blocker = client.submit("sleep", "3000", Bytes::new()).unwrap();
    wait_stats(&client, "busy", |s| s.pool.busy == 1).await;
    let waiter = client.submit("echo", "never", Bytes::new()).unwrap();
    wait_stats(&client, "1 queued", |s| s.queue.len == 1).await;
    let list = get(&m, "/jobs?status=queued").await.json();
    let jobs = list["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{list}");
    let id = jobs[0]["id"].as_str().unwrap().to_owned();

    let c = delete(&m, &format!("/jobs/{id}")).await;
    assert_eq!(c.status, 200, "{}", c.text());
    assert_eq!(c.json(), json!({"id": id, "status": "cancelled"}));
    match waiter.finish().await {
        Err(taskmaster_tests::ClientError::Job(f)) => {
            assert_eq!(f.reason, taskmaster_tests::Reason::Cancelled);
            assert_eq!(f.id, id);
        }
        other => panic!("the waiting submitter should see cancelled, got {other:?}"),
    }
    let v = view(&m, &id).await;
    assert_eq!(
        (v["status"].as_str(), v["reason"].as_str()),
        (Some("cancelled"), Some("cancelled"))
    );
    assert!(v["message"].is_string(), "{v}");
    assert!(v.get("started_at").is_none(), "{v}");
    let s = wait_stats(&client, "queue empty", |s| s.queue.len == 0).await;
    assert_eq!((s.jobs.cancelled, s.pool.busy), (1, 1));
    // The running job was not disturbed.
    assert!(pid_alive(child));
    assert_eq!(m.children(), [child]);
    let r = get(&m, &format!("/jobs/{id}/result")).await;
    assert_failure(&r, 502, "cancelled", "cancelled");
    let again = delete(&m, &format!("/jobs/{id}")).await;
    assert_eq!(again.status, 409);
    assert_eq!(again.json(), json!({"id": id, "status": "cancelled"}));
    drop(blocker);
}

#[tokio::test]
async fn cancel_a_start_later_job_and_finished_jobs_conflict() {
    let m = Master::ready_http(&["--pool-start", "1"]);
    let (id, _) = submit(&m, "/jobs/echo?start_later=true", "held").await;
    let c = delete(&m, &format!("/jobs/{id}")).await;
    assert_eq!(c.status, 200, "{}", c.text());
    assert_eq!(c.json(), json!({"id": id, "status": "cancelled"}));
    assert_eq!(status_of(&m, &id).await, "cancelled");
    assert_eq!(stats(&m).await["jobs"]["start_later"], 0);
    let s = post(&m, &format!("/jobs/{id}/start"), Bytes::new()).await;
    assert_eq!(s.status, 409);
    assert_eq!(s.json(), json!({"id": id, "status": "cancelled"}));
    assert_failure(
        &get(&m, &format!("/jobs/{id}/result")).await,
        502,
        "cancelled",
        "cancelled",
    );

    // Finished jobs cannot be cancelled: completed and failed alike.
    let done = post(&m, "/jobs/echo?wait=10", "x").await;
    let done_id = done.header("x-job-id").unwrap().to_owned();
    let c = delete(&m, &format!("/jobs/{done_id}")).await;
    assert_eq!(c.status, 409);
    assert_eq!(c.json(), json!({"id": done_id, "status": "completed"}));
    let failed = post(&m, "/jobs/fail?wait=10", "no").await;
    let failed_id = failed.json()["id"].as_str().unwrap().to_owned();
    let c = delete(&m, &format!("/jobs/{failed_id}")).await;
    assert_eq!(c.status, 409);
    assert_eq!(c.json(), json!({"id": failed_id, "status": "failed"}));
    // The completed job's result is untouched.
    let r = get(&m, &format!("/jobs/{done_id}/result")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "x"));
}

#[tokio::test]
async fn cancel_a_processing_job_kills_and_replaces_its_child() {
    let mut m = Master::ready_http(&["--pool-start", "1", "--pool-max", "1"]);
    let old = m.children();
    assert_eq!(old.len(), 1);
    let url = m.url("/jobs/sleep?wait=30");
    let waiter = tokio::spawn(async move {
        let t = Instant::now();
        (http("POST", &url, "10000").await, t.elapsed())
    });
    let processing = || async {
        let list = get(&m, "/jobs?status=processing").await.json();
        list["jobs"].as_array().unwrap().len() == 1
    };
    wait_until_async("a processing job", Duration::from_secs(15), processing).await;
    let list = get(&m, "/jobs?status=processing").await.json();
    let id = list["jobs"][0]["id"].as_str().unwrap().to_owned();
    let c = delete(&m, &format!("/jobs/{id}")).await;
    assert_eq!(c.status, 200, "{}", c.text());
    assert_eq!(c.json(), json!({"id": id, "status": "cancelled"}));
    let (answer, took) = waiter.await.unwrap();
    let f = assert_failure(&answer, 502, "cancelled", "cancelled");
    assert_eq!(f["id"], id.as_str());
    assert!(
        took < Duration::from_secs(5),
        "the waiter was answered after {took:?}"
    );

    wait_until(
        "the cancelled job's child is gone",
        Duration::from_secs(10),
        || !pid_alive(old[0]),
    );
    let client = m.client().await;
    wait_stats(&client, "a fresh idle child", |s| {
        s.pool.idle == 1 && s.pool.size == 1 && s.children.spawned == 2
    })
    .await;
    let new = m.children();
    assert_eq!(new.len(), 1);
    assert_ne!(new, old);
    let v = view(&m, &id).await;
    assert_eq!(
        (v["status"].as_str(), v["reason"].as_str()),
        (Some("cancelled"), Some("cancelled"))
    );
    assert!(
        v["started_at"].is_string() && v["finished_at"].is_string(),
        "{v}"
    );
    let p = post(&m, "/jobs/pid?wait=10", Bytes::new()).await;
    assert_eq!((p.status, p.text()), (200, new[0].to_string()));
}

#[tokio::test]
async fn overload_is_503_with_retry_after() {
    let m = Master::ready_http(&["--pool-start", "1", "--pool-max", "1", "--job-max", "0"]);
    let (blocker, _) = submit(&m, "/jobs/sleep", "5000").await;
    wait_status(&m, &blocker, "processing").await;
    for query in ["/jobs/echo", "/jobs/echo?wait=10"] {
        let t = Instant::now();
        let a = post(&m, query, "x").await;
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{query}: refused at once"
        );
        let f = assert_failure(&a, 503, "failed", "overload");
        assert_eq!(a.header("retry-after"), Some("1"), "{query}");
        assert!(!f["message"].as_str().unwrap().is_empty());
        // Refused jobs are not kept.
        let gone = get(&m, &format!("/jobs/{}", f["id"].as_str().unwrap())).await;
        assert_error(&gone, 404, "a refused job's id");
    }
    let st = stats(&m).await;
    assert_eq!(st["jobs"]["overload"], 2, "{st}");
}

#[tokio::test]
async fn start_with_a_full_queue_is_503_and_the_job_stays_held() {
    let m = Master::ready_http(&["--pool-start", "1", "--pool-max", "1", "--job-max", "1"]);
    let (blocker, _) = submit(&m, "/jobs/sleep", "5000").await;
    wait_status(&m, &blocker, "processing").await;
    let (held, _) = submit(&m, "/jobs/echo?start_later=true", "h").await;
    let (queued, st) = submit(&m, "/jobs/echo", "q").await;
    assert_eq!(st, "queued");
    let s = post(&m, &format!("/jobs/{held}/start"), Bytes::new()).await;
    assert_eq!(s.status, 503, "{}", s.text());
    assert_eq!(s.header("retry-after"), Some("1"));
    let f = s.json();
    assert_eq!(
        (f["id"].as_str(), f["reason"].as_str()),
        (Some(held.as_str()), Some("overload")),
        "{f}"
    );
    assert!(f["message"].is_string(), "{f}");
    assert_eq!(status_of(&m, &held).await, "start-later");
    // Room again: it starts.
    assert_eq!(delete(&m, &format!("/jobs/{queued}")).await.status, 200);
    let s2 = post(&m, &format!("/jobs/{held}/start"), Bytes::new()).await;
    assert_eq!(
        (s2.status, s2.json()),
        (200, json!({"id": held, "status": "queued"}))
    );
    // SPEC 6 and docs/openapi.yaml (FailureBody, startJob 503): a failure
    // answer's status is "failed" — it describes the refused request.
    assert_eq!(f["status"], "failed", "the 503 start answer: {f}");
}

#[tokio::test]
async fn start_later_submit_is_accepted_while_the_queue_is_full() {
    let m = Master::ready_http(&["--pool-start", "1", "--pool-max", "1", "--job-max", "0"]);
    let (blocker, _) = submit(&m, "/jobs/sleep", "5000").await;
    wait_status(&m, &blocker, "processing").await;
    let a = post(&m, "/jobs/echo?start_later=true", "held").await;
    assert_eq!(a.status, 202, "start_later with a full queue: {}", a.text());
    assert_eq!(a.json()["status"], "start-later");
}

/// design3: one start-later job more than --keep-results is refused
/// `overload`.
#[tokio::test]
async fn start_later_jobs_held_are_bounded_by_keep_results() {
    let m = Master::ready_http(&["--pool-start", "1", "--keep-results", "3"]);
    for _ in 0..3 {
        submit(&m, "/jobs/echo?start_later=true", "held").await;
    }
    let a = post(&m, "/jobs/echo?start_later=true", "one more").await;
    assert_failure(&a, 503, "failed", "overload");
    assert_eq!(stats(&m).await["jobs"]["start_later"], 3);
}

#[tokio::test]
async fn failures_map_to_404_and_502() {
    let m = Master::ready_http(&["--pool-start", "1"]);
    for query in ["/jobs/no-such-module", "/jobs/no-such-module?wait=10"] {
        let f = assert_failure(&post(&m, query, "x").await, 404, "failed", "unknown-module");
        assert!(
            f["message"].as_str().unwrap().contains("no-such-module"),
            "{f}"
        );
    }
    let f = assert_failure(
        &post(&m, "/jobs/fail?wait=10", "disk on fire").await,
        502,
        "failed",
        "failed",
    );
    assert_eq!(f["message"], "disk on fire");
    // The same failure from the table.
    let id = f["id"].as_str().unwrap();
    let r = get(&m, &format!("/jobs/{id}/result")).await;
    assert_eq!(assert_failure(&r, 502, "failed", "failed"), f);
    let v = view(&m, id).await;
    assert_eq!(
        (
            v["status"].as_str(),
            v["reason"].as_str(),
            v["message"].as_str()
        ),
        (Some("failed"), Some("failed"), Some("disk on fire"))
    );

    let f = assert_failure(
        &post(&m, "/jobs/crash?wait=10", Bytes::new()).await,
        502,
        "failed",
        "error",
    );
    assert!(f["message"].as_str().unwrap().contains("SIGABRT"), "{f}");
    let st = stats(&m).await;
    assert_eq!(
        st["jobs"]["failed_by_reason"],
        json!({"error": 1, "failed": 1, "unknown-module": 2})
    );
}

#[tokio::test]
async fn malformed_requests_get_json_errors() {
    let m = Master::ready_http(&["--pool-start", "1"]);
    let done = post(&m, "/jobs/echo?wait=10", "x").await;
    let id = done.header("x-job-id").unwrap().to_owned();
    let unknown = format!("{}-999999", &id[..12]);
    let cases: Vec<(&str, String, u16)> = vec![
        ("GET", "/jobs/not-an-id".into(), 400),
        ("GET", "/jobs/0123456789ab-0".into(), 400),
        ("GET", "/jobs/0123456789AB-1".into(), 400),
        ("GET", "/jobs/not-an-id/result".into(), 400),
        ("POST", "/jobs/not-an-id/start".into(), 400),
        ("DELETE", "/jobs/not-an-id".into(), 400),
        ("GET", format!("/jobs/{unknown}"), 404),
        ("GET", "/jobs/000000000000-1".into(), 404),
        ("GET", format!("/jobs/{unknown}/result"), 404),
        ("POST", format!("/jobs/{unknown}/start"), 404),
        ("DELETE", format!("/jobs/{unknown}"), 404),
        ("POST", "/jobs/echo?wait=abc".into(), 400),
        ("POST", "/jobs/echo?wait=-1".into(), 400),
        ("POST", "/jobs/echo?wait=3601".into(), 400),
        ("POST", "/jobs/echo?wait=".into(), 400),
        ("POST", "/jobs/echo?timeout=x".into(), 400),
        ("POST", "/jobs/echo?start_later=maybe".into(), 400),
        ("POST", "/jobs/echo?bogus=1".into(), 400),
        ("POST", "/jobs/echo?wait=1&wait=2".into(), 400),
        ("GET", format!("/jobs/{id}/result?wait=abc"), 400),
        ("GET", format!("/jobs/{id}?wait=1"), 400),
        ("GET", "/jobs?limit=0".into(), 400),
        ("GET", "/jobs?limit=10001".into(), 400),
        ("GET", "/jobs?limit=ten".into(), 400),
        ("GET", "/jobs?status=done".into(), 400),
        ("GET", "/stats?x=1".into(), 400),
        ("GET", "/nope".into(), 404),
        ("GET", "/".into(), 404),
        ("GET", format!("/jobs/{id}/result/more"), 404),
        ("PUT", "/jobs/x".into(), 405),
        ("PATCH", format!("/jobs/{id}"), 405),
        ("GET", "/jobs/x/start".into(), 405),
        ("DELETE", format!("/jobs/{id}/result"), 405),
        ("POST", "/stats".into(), 405),
        ("POST", "/jobs".into(), 405),
        ("DELETE", "/healthz".into(), 405),
    ];
    for (method, path, code) in &cases {
        let a = http(method, &m.url(path), Bytes::new()).await;
        assert_error(&a, *code, &format!("{method} {path}"));
        if *code == 405 {
            assert!(a.header("allow").is_some(), "{method} {path}: Allow header");
        }
    }
    // None of them made a job: only the first echo was submitted.
    let st = stats(&m).await;
    assert_eq!(st["jobs"]["submitted"], 1, "{st}");
}

/// Bytes that are not all alike, so a shifted or truncated copy shows.
fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect::<Vec<u8>>()
        .into()
}

#[tokio::test]
async fn eight_mib_round_trips_and_over_the_limit_is_413() {
    let m = Master::ready_http(&["--pool-start", "1"]);
    let big = pattern(8 * 1024 * 1024, 7);
    let a = post(&m, "/jobs/echo?wait=30", big.clone()).await;
    assert_eq!(a.status, 200, "{}", a.header("content-type").unwrap_or(""));
    assert_eq!(a.body.len(), big.len());
    assert!(a.body == big, "8 MiB echo came back changed");

    let small = Master::ready_http(&["--pool-start", "1", "--max-payload", "1048576"]);
    let a = post(&small, "/jobs/echo?wait=10", pattern(2 * 1024 * 1024, 1)).await;
    assert_error(&a, 413, "2 MiB body over --max-payload 1 MiB");
    let ok = pattern(512 * 1024, 3);
    let a = post(&small, "/jobs/echo?wait=10", ok.clone()).await;
    assert_eq!(
        (a.status, a.body == ok),
        (200, true),
        "still serving after a 413"
    );
    assert_eq!(get(&small, "/healthz").await.status, 200);
    assert_eq!(stats(&small).await["jobs"]["submitted"], 1);
}

#[tokio::test]
async fn sixteen_http_clients_get_exactly_their_own_bytes() {
    let m = Master::ready_http(&["--pool-start", "4", "--pool-max", "4", "--job-max", "1000"]);
    let mut tasks = Vec::new();
    for c in 0..16u32 {
        let url = m.url("/jobs/echo?wait=30");
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for j in 0..50u32 {
                let mut input = format!("client {c} job {j} ").into_bytes();
                input.extend_from_slice(&pattern(((c * 50 + j) * 37 % 3000) as usize, c as u8));
                let a = http("POST", &url, input.clone()).await;
                assert_eq!(a.status, 200, "client {c} job {j}: {}", a.text());
                assert!(
                    a.body == input,
                    "client {c} job {j} got someone else's bytes"
                );
                ids.push(a.header("x-job-id").unwrap().to_owned());
            }
            ids
        }));
    }
    let mut ids = HashSet::new();
    for t in tasks {
        for id in t.await.unwrap() {
            assert!(ids.insert(id.clone()), "id {id} given twice");
        }
    }
    assert_eq!(ids.len(), 800);
    let st = stats(&m).await;
    assert_eq!(
        (
            st["jobs"]["completed"].as_u64(),
            st["jobs"]["failed"].as_u64()
        ),
        (Some(800), Some(0))
    );
}

#[tokio::test]
async fn keep_results_evicts_the_oldest() {
    let m = Master::ready_http(&["--pool-start", "2", "--keep-results", "50"]);
    let mut ids = Vec::new();
    for i in 0..200 {
        let a = post(&m, "/jobs/echo?wait=10", format!("job {i}")).await;
        assert_eq!(a.status, 200);
        ids.push(a.header("x-job-id").unwrap().to_owned());
    }
    assert_error(
        &get(&m, &format!("/jobs/{}", ids[0])).await,
        404,
        "evicted job",
    );
    assert_error(
        &get(&m, &format!("/jobs/{}/result", ids[0])).await,
        404,
        "evicted result",
    );
    assert_error(
        &get(&m, &format!("/jobs/{}", ids[149])).await,
        404,
        "151st newest",
    );
    let last = ids.last().unwrap();
    assert_eq!(status_of(&m, last).await, "completed");
    let r = get(&m, &format!("/jobs/{last}/result")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "job 199"));
    assert_eq!(status_of(&m, &ids[150]).await, "completed");
    assert_eq!(stats(&m).await["jobs"]["kept"], 50);
    let list = get(&m, "/jobs?limit=10000").await.json();
    let listed: Vec<&str> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    let newest: Vec<&str> = ids[150..].iter().rev().map(String::as_str).collect();
    assert_eq!(listed, newest, "the 50 newest, newest first");
}

/// Runs echo jobs `range` on one connection, `window` in flight, checking
/// every answer; returns when all have answered.
async fn pipelined_echo(
    client: &taskmaster_proto::Client,
    range: std::ops::Range<u32>,
    window: usize,
) {
    let input = |i: u32| Bytes::from(format!("{i:08}").repeat(8));
    let mut in_flight = std::collections::VecDeque::with_capacity(window);
    for i in range {
        if in_flight.len() == window {
            let (j, job): (u32, taskmaster_proto::JobHandle) = in_flight.pop_front().unwrap();
            let out = job
                .finish()
                .await
                .unwrap_or_else(|e| panic!("job {j}: {e}"))
                .output;
            assert_eq!(out, input(j), "job {j}");
        }
        in_flight.push_back((i, client.submit("echo", input(i), Bytes::new()).unwrap()));
    }
    for (j, job) in in_flight {
        let out = job
            .finish()
            .await
            .unwrap_or_else(|e| panic!("job {j}: {e}"))
            .output;
        assert_eq!(out, input(j), "job {j}");
    }
}

#[tokio::test]
async fn master_memory_stays_flat_over_100k_jobs() {
    const FIRST: u32 = 20_000;
    const TOTAL: u32 = 100_000;
    let m = Master::ready(&[
        "--pool-start",
        "2",
        "--pool-max",
        "2",
        "--job-max",
        "10000",
        "--keep-results",
        "1000",
    ]);
    let client = m.client().await;
    let started = Instant::now();
    pipelined_echo(&client, 0..FIRST, 256).await;
    let rss_first = vm_rss_kib(m.pid);
    pipelined_echo(&client, FIRST..TOTAL, 256).await;
    let rss_last = vm_rss_kib(m.pid);
    let took = started.elapsed();
    let s = client.stats().await.unwrap();
    assert_eq!(s.jobs.completed, u64::from(TOTAL));
    assert_eq!(s.jobs.kept, 1000);
    let growth = rss_last as f64 / rss_first as f64 - 1.0;
    println!(
        "master VmRSS after {FIRST} jobs: {rss_first} KiB; after {TOTAL}: {rss_last} KiB \
         ({:+.1}%); {TOTAL} jobs in {took:.1?}",
        growth * 100.0
    );
    assert!(
        growth < 0.10,
        "master RSS grew {:.1}% from {rss_first} KiB to {rss_last} KiB",
        growth * 100.0
    );
}

/// The value of the first sample line `name` (with labels, as written).
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

#[tokio::test]
async fn healthz_stats_and_metrics() {
    let m = Master::ready_http(&["--pool-start", "2", "--pool-max", "3", "--job-max", "7"]);
    let h = get(&m, "/healthz").await;
    assert_eq!((h.status, h.json()), (200, json!({"status": "ok"})));
    let done = post(&m, "/jobs/echo?wait=10", "x").await;
    assert_eq!(done.status, 200);
    let _ = post(&m, "/jobs/fail?wait=10", "no").await;

    let v = stats(&m).await;
    for (section, keys) in [
        ("pool", &["start", "max", "size", "busy", "idle"][..]),
        ("queue", &["len", "max"][..]),
        (
            "jobs",
            &["submitted", "completed", "failed", "overload"][..],
        ),
    ] {
        for key in keys {
            assert!(v[section][key].is_u64(), "stats lacks {section}.{key}: {v}");
        }
    }
    assert_eq!(
        (
            v["pool"]["start"].as_u64(),
            v["pool"]["max"].as_u64(),
            v["queue"]["max"].as_u64()
        ),
        (Some(2), Some(3), Some(7))
    );
    assert_eq!(
        (
            v["jobs"]["submitted"].as_u64(),
            v["jobs"]["completed"].as_u64(),
            v["jobs"]["failed"].as_u64()
        ),
        (Some(2), Some(1), Some(1))
    );
    // The same figures as the socket's stats.
    let socket: Value =
        serde_json::from_str(&m.client().await.stats_json().await.unwrap()).unwrap();
    for section in ["pool", "queue", "jobs", "children"] {
        assert_eq!(v[section], socket[section], "{section}");
    }

    let a = get(&m, "/metrics").await;
    assert_eq!(a.status, 200);
    let ct = a.header("content-type").unwrap_or_default().to_owned();
    assert!(
        ct.starts_with("application/openmetrics-text") || ct.starts_with("text/plain"),
        "{ct}"
    );
    let text = a.text();
    assert_eq!(
        sample(&text, "taskmaster_jobs_submitted_total"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "taskmaster_jobs_finished_total{outcome=\"completed\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "taskmaster_jobs_finished_total{outcome=\"failed\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "taskmaster_jobs_failed_total{reason=\"failed\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "taskmaster_pool_size"), Some(2.0), "{text}");
    assert_eq!(sample(&text, "taskmaster_pool_max"), Some(3.0), "{text}");
    assert!(
        text.contains("taskmaster_job_run_seconds_bucket{"),
        "{text}"
    );
    assert_eq!(
        sample(&text, "taskmaster_job_run_seconds_count"),
        Some(2.0),
        "{text}"
    );
    assert!(
        text.lines()
            .all(|l| l.starts_with('#') || l.starts_with("taskmaster_") || l.is_empty()),
        "{text}"
    );
}

#[tokio::test]
async fn healthz_is_503_before_ready_and_while_shutting_down() {
    // A handler that never connects back: the pool stays starting.
    let script =
        std::env::temp_dir().join(format!("taskmaster-mute-handler-{}", std::process::id()));
    std::fs::write(&script, "#!/bin/sh\nexec sleep 30\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut mute = Master::start_with(&["--http", "127.0.0.1:0", "--pool-start", "1"], &script);
    let h = get(&mute, "/healthz").await;
    assert_eq!((h.status, h.json()), (503, json!({"status": "starting"})));
    let _ = mute.children();
    drop(mute);
    let _ = std::fs::remove_file(&script);

    let m = Master::ready_http(&["--pool-start", "1", "--grace", "10"]);
    let (running, _) = submit(&m, "/jobs/sleep", "1500").await;
    wait_status(&m, &running, "processing").await;
    m.signal(nix::sys::signal::Signal::SIGTERM);
    m.wait_log("shutting down", Duration::from_secs(5));
    let h = get(&m, "/healthz").await;
    assert_eq!(
        (h.status, h.json()["status"].as_str()),
        (503, Some("shutting-down"))
    );
    assert_failure(
        &post(&m, "/jobs/echo", "late").await,
        502,
        "failed",
        "shutting-down",
    );
    let r = get(&m, &format!("/jobs/{running}/result?wait=10")).await;
    assert_eq!(
        r.status,
        200,
        "the running job finishes in the grace: {}",
        r.text()
    );
}

#[tokio::test]
async fn timeout_fails_the_job_and_replaces_the_child() {
    let mut m = Master::ready_http(&["--pool-start", "1", "--pool-max", "1"]);
    let old = m.children();
    let t = Instant::now();
    let a = post(&m, "/jobs/sleep?timeout=0.3&wait=10", "5000").await;
    let took = t.elapsed();
    let f = assert_failure(&a, 502, "failed", "timeout");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "timeout=0.3 answered after {took:?}"
    );
    wait_until(
        "the timed-out child is gone",
        Duration::from_secs(10),
        || !pid_alive(old[0]),
    );
    let client = m.client().await;
    wait_stats(&client, "a fresh idle child", |s| {
        s.pool.idle == 1 && s.children.spawned == 2
    })
    .await;
    let new = m.children();
    assert_eq!(new.len(), 1);
    assert_ne!(new, old);
    let v = view(&m, f["id"].as_str().unwrap()).await;
    assert_eq!(
        (v["status"].as_str(), v["reason"].as_str()),
        (Some("failed"), Some("timeout"))
    );
    // A job within its limit is unaffected.
    let a = post(&m, "/jobs/sleep?timeout=5&wait=10", "50").await;
    assert_eq!((a.status, a.text()), (200, new[0].to_string()));
}

// ---- docs/openapi.yaml ----

fn openapi() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).expect("docs/openapi.yaml parses")
}

/// Follows `$ref: "#/a/b/c"` (repeatedly) within the document.
fn resolve<'a>(doc: &'a Value, mut v: &'a Value) -> &'a Value {
    while let Some(r) = v.get("$ref").and_then(Value::as_str) {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("external $ref {r}"));
        v = doc
            .pointer(pointer)
            .unwrap_or_else(|| panic!("dangling $ref {r}"));
    }
    v
}

/// Problems of `value` against `schema`: missing `required` fields, at
/// every depth (properties, array items), with `oneOf`/`anyOf` alternatives.
fn schema_problems(doc: &Value, schema: &Value, value: &Value, at: &str) -> Vec<String> {
    let schema = resolve(doc, schema);
    for key in ["oneOf", "anyOf"] {
        if let Some(alts) = schema.get(key).and_then(Value::as_array) {
            let all: Vec<Vec<String>> = alts
                .iter()
                .map(|s| schema_problems(doc, s, value, at))
                .collect();
            return match all.iter().find(|p| p.is_empty()) {
                Some(_) => vec![],
                None => vec![format!("{at}: matches no {key} alternative: {all:?}")],
            };
        }
    }
    let mut out = Vec::new();
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for field in required {
            let field = field.as_str().unwrap();
            if value.get(field).is_none() {
                out.push(format!("{at}: required field {field:?} missing in {value}"));
            }
        }
    }
    if let (Some(props), Some(obj)) = (
        schema.get("properties").and_then(Value::as_object),
        value.as_object(),
    ) {
        for (name, sub) in props {
            if let Some(v) = obj.get(name) {
                out.extend(schema_problems(doc, sub, v, &format!("{at}.{name}")));
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), value.as_array()) {
        for (i, v) in arr.iter().enumerate() {
            out.extend(schema_problems(doc, items, v, &format!("{at}[{i}]")));
        }
    }
    out
}

/// Checks an answer against an operation's documented responses: the
/// status is listed, the content type is a documented one, and a JSON body
/// has every required field. Returns the problems.
fn conformance(doc: &Value, op: &Value, what: &str, a: &HttpAnswer) -> Vec<String> {
    let responses = &op["responses"];
    let Some(documented) = responses.get(a.status.to_string()) else {
        let listed: Vec<&String> = responses.as_object().unwrap().keys().collect();
        return vec![format!(
            "{what}: status {} not documented (documented: {listed:?}); body {}",
            a.status,
            a.text()
        )];
    };
    let documented = resolve(doc, documented);
    let Some(content) = documented.get("content").and_then(Value::as_object) else {
        return if a.body.is_empty() {
            vec![]
        } else {
            vec![format!("{what}: undocumented body")]
        };
    };
    let ct = a.header("content-type").unwrap_or_default();
    let media = ct.split(';').next().unwrap().trim();
    let Some(entry) = content.get(media) else {
        let listed: Vec<&String> = content.keys().collect();
        return vec![format!("{what}: content-type {ct:?} not among {listed:?}")];
    };
    if media != "application/json" {
        return vec![];
    }
    let Ok(body) = serde_json::from_slice::<Value>(&a.body) else {
        return vec![format!("{what}: body is not JSON: {}", a.text())];
    };
    schema_problems(doc, &entry["schema"], &body, what)
}

/// Every documented operation, as (path template, METHOD, operation).
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().unwrap() {
            if [
                "get", "put", "post", "delete", "patch", "head", "options", "trace",
            ]
            .contains(&method.as_str())
            {
                ops.push((path.clone(), method.to_uppercase(), op.clone()));
            }
        }
    }
    ops
}

/// Fills `{param}`s of a path template from `values`.
fn fill(template: &str, values: &HashMap<&str, String>) -> String {
    let mut out = template.to_owned();
    while let Some(start) = out.find('{') {
        let end = out[start..].find('}').unwrap() + start;
        let name = &out[start + 1..end];
        let v = values
            .get(name)
            .unwrap_or_else(|| panic!("no value for {{{name}}} in {template}"));
        out.replace_range(start..=end, v);
    }
    out
}

#[tokio::test]
async fn every_documented_operation_answers_as_documented() {
    let doc = openapi();
    let ops = operations(&doc);
    let seen: HashSet<(String, String)> =
        ops.iter().map(|(p, m, _)| (p.clone(), m.clone())).collect();
    for (path, method) in [
        ("/jobs", "GET"),
        ("/jobs/{module_or_id}", "POST"),
        ("/jobs/{module_or_id}", "GET"),
        ("/jobs/{module_or_id}", "DELETE"),
        ("/jobs/{id}/result", "GET"),
        ("/jobs/{id}/start", "POST"),
        ("/stats", "GET"),
        ("/metrics", "GET"),
        ("/healthz", "GET"),
    ] {
        assert!(
            seen.contains(&(path.to_owned(), method.to_owned())),
            "openapi lacks {method} {path}: {seen:?}"
        );
    }
    let m = Master::ready_http(&["--pool-start", "1"]);
    let mut problems = Vec::new();
    for (template, method, op) in &ops {
        // A request that should succeed: a module for POST /jobs/{..},
        // a fresh start-later job where the operation changes it, a
        // completed job otherwise.
        let done = post(&m, "/jobs/echo?wait=10", "done")
            .await
            .header("x-job-id")
            .unwrap()
            .to_owned();
        let (held, _) = submit(&m, "/jobs/echo?start_later=true", "held").await;
        let target = match (method.as_str(), template.as_str()) {
            ("POST", "/jobs/{module_or_id}") => "echo".to_owned(),
            ("DELETE", _) | ("POST", _) => held.clone(),
            _ => done.clone(),
        };
        let values: HashMap<&str, String> =
            [("module_or_id", target.clone()), ("id", target)].into();
        let path = fill(template, &values);
        // A stream never ends: its headers are the answer to check.
        if op["responses"]["200"]["content"]
            .get("text/event-stream")
            .is_some()
        {
            let head = stream_head(&m, &path);
            if !(head.starts_with("HTTP/1.1 200") && head.contains("text/event-stream")) {
                problems.push(format!("{method} {path}: stream answered {head:?}"));
            }
            continue;
        }
        // Without and with `wait` where the operation takes it.
        let takes_wait = op["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| resolve(&doc, p)["name"] == "wait");
        let mut good = vec![path.clone()];
        if takes_wait {
            good.push(format!("{path}?wait=10"));
        }
        for path in good {
            let a = http(method, &m.url(&path), "input").await;
            let what = format!("{method} {path}");
            assert!(
                a.status < 300,
                "{what} should succeed, got {}: {}",
                a.status,
                a.text()
            );
            problems.extend(conformance(&doc, op, &what, &a));
        }

        // The documented failure answers too: a malformed and an unknown id
        // where the path takes one, an unknown module for submit.
        let mut bad = Vec::new();
        if template.contains('{') {
            if method == "POST" && template == "/jobs/{module_or_id}" {
                bad.push(fill(
                    template,
                    &[("module_or_id", "no-such-module".to_owned())].into(),
                ));
            } else {
                for id in ["not-an-id".to_owned(), format!("{}-999999", &done[..12])] {
                    bad.push(fill(
                        template,
                        &[("module_or_id", id.clone()), ("id", id)].into(),
                    ));
                }
            }
        }
        for path in bad {
            let a = http(method, &m.url(&path), "input").await;
            let what = format!("{method} {path}");
            if a.status < 400 {
                problems.push(format!(
                    "{what}: expected a 4xx answer, got {}: {}",
                    a.status,
                    a.text()
                ));
                continue;
            }
            problems.extend(conformance(&doc, op, &what, &a));
        }
    }
    assert!(
        problems.is_empty(),
        "{} conformance problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[tokio::test]
async fn documented_route_rules_hold() {
    let doc = openapi();
    let m = Master::ready_http(&["--pool-start", "1"]);
    let done = post(&m, "/jobs/echo?wait=10", "done")
        .await
        .header("x-job-id")
        .unwrap()
        .to_owned();
    let mut by_path: HashMap<String, Vec<String>> = HashMap::new();
    for (template, method, _) in operations(&doc) {
        by_path.entry(template).or_default().push(method);
    }
    let mut problems = Vec::new();
    for (template, methods) in &by_path {
        let path = fill(
            template,
            &[("module_or_id", done.clone()), ("id", done.clone())].into(),
        );
        // A query parameter the route does not take: 400 ErrorBody.
        for method in methods {
            let a = http(method, &m.url(&format!("{path}?bogus=1")), Bytes::new()).await;
            if a.status != 400 || !is_json(&a) || a.json().get("error").is_none() {
                problems.push(format!(
                    "{method} {path}?bogus=1: {} {}",
                    a.status,
                    a.text()
                ));
            }
        }
        // A method the path does not take: 405, ErrorBody, Allow listing
        // the documented methods.
        for method in ["PUT", "PATCH"] {
            let a = http(method, &m.url(&path), Bytes::new()).await;
            let allow: HashSet<String> = a
                .header("allow")
                .unwrap_or_default()
                .split(',')
                .map(|s| s.trim().to_owned())
                .collect();
            let ok = a.status == 405
                && is_json(&a)
                && a.json().get("error").is_some()
                && methods.iter().all(|m| allow.contains(m));
            if !ok {
                problems.push(format!(
                    "{method} {path}: {} allow {allow:?} body {}",
                    a.status,
                    a.text()
                ));
            }
        }
        // HEAD wherever GET is, with no body.
        if methods.iter().any(|m| m == "GET") {
            let a = http("HEAD", &m.url(&path), Bytes::new()).await;
            if a.status != 200 || !a.body.is_empty() {
                problems.push(format!(
                    "HEAD {path}: {} body {} bytes",
                    a.status,
                    a.body.len()
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The status line and headers of a streaming GET (read until the blank
/// line; the body never ends).
fn stream_head(m: &Master, path: &str) -> String {
    use std::io::{Read, Write};
    let addr = m.http_addr.clone().expect("master with --http");
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head)
        .to_lowercase()
        .replace("http/1.1", "HTTP/1.1")
}
