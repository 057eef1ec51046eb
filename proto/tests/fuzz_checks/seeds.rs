//! The seed corpus of the fuzz targets: valid frames of every message kind,
//! made by the real encoder, and the edge cases of issue 6 (length prefix
//! 0xFFFFFFFF, truncated frames, garbage after a valid hello, unknown
//! variant indexes, huge lengths inside small frames, silent peers).
//!
//! `fuzz_corpus.rs` checks that every seed here is in `fuzz/corpus/` with
//! the same bytes; `cargo run -p taskmaster-proto --example write_fuzz_corpus`
//! writes them there.

use crate::fuzz_checks::{Script, MAX_PAYLOAD};
use bytes::{BufMut, Bytes, BytesMut};
use taskmaster_proto::agent::{AgentHello, ChildEnd, FromAgent, ToAgent};
use taskmaster_proto::codec::{self, to_frame, HEADER_LIMIT};
use taskmaster_proto::jobs::{Outcome, SubmitOptions};
use taskmaster_proto::messages::{
    ClientHello, FromHandler, HandlerHello, Hello, Message, ToClient, ToHandler, ToMaster,
    PROTOCOL_VERSION, SECRET_LEN,
};
use taskmaster_proto::Reason;

/// One seed file: `fuzz/corpus/{target}/{name}`.
pub struct Seed {
    /// Fuzz target (corpus folder).
    pub target: &'static str,
    /// File name.
    pub name: String,
    /// Contents.
    pub bytes: Vec<u8>,
}

const ID: &str = "0123456789ab-1";

fn frame<M: Message>(msg: &M) -> Vec<u8> {
    to_frame(msg).expect("seed messages encode").to_vec()
}

fn body<M: Message>(msg: &M) -> Vec<u8> {
    frame(msg)[codec::LENGTH_BYTES..].to_vec()
}

fn with_prefix(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

fn hellos() -> Vec<(&'static str, Hello)> {
    vec![
        (
            "hello-handler",
            Hello::Handler(HandlerHello {
                version: PROTOCOL_VERSION,
                child_id: 7,
                pid: 4242,
                secret: [0x5a; SECRET_LEN],
                modules: vec!["echo".into(), "sleep".into(), "sha256".into()],
            }),
        ),
        (
            "hello-handler-no-modules",
            Hello::Handler(HandlerHello {
                version: PROTOCOL_VERSION,
                child_id: 1,
                pid: 1,
                secret: [0; SECRET_LEN],
                modules: vec![],
            }),
        ),
        (
            "hello-client-token",
            Hello::Client(ClientHello {
                version: PROTOCOL_VERSION,
                token: Some("s3cret-token".into()),
            }),
        ),
        (
            "hello-client",
            Hello::Client(ClientHello {
                version: PROTOCOL_VERSION,
                token: None,
            }),
        ),
        (
            "hello-client-old-version",
            Hello::Client(ClientHello {
                version: 1,
                token: None,
            }),
        ),
    ]
}

fn to_master() -> Vec<(&'static str, ToMaster)> {
    vec![
        (
            "submit",
            ToMaster::Submit {
                tag: 1,
                module: "echo".into(),
                context: Bytes::from_static(b"ctx"),
                options: SubmitOptions::default(),
                input: Bytes::from_static(b"hello"),
            },
        ),
        (
            "submit-options",
            ToMaster::Submit {
                tag: u64::MAX,
                module: "sleep".into(),
                context: Bytes::new(),
                options: SubmitOptions {
                    detach: true,
                    start_later: true,
                    timeout_ms: Some(1500),
                    priority: taskmaster_proto::Priority::High,
                    retries: 2,
                },
                input: Bytes::from_static(b"100"),
            },
        ),
        (
            "submit-empty",
            ToMaster::Submit {
                tag: 0,
                module: String::new(),
                context: Bytes::new(),
                options: SubmitOptions {
                    detach: false,
                    start_later: false,
                    timeout_ms: Some(0),
                    ..SubmitOptions::default()
                },
                input: Bytes::new(),
            },
        ),
        ("stats", ToMaster::Stats { tag: 3 }),
        (
            "status",
            ToMaster::Status {
                tag: 4,
                id: ID.into(),
            },
        ),
        (
            "result",
            ToMaster::Result {
                tag: 5,
                id: ID.into(),
                wait_ms: 250,
            },
        ),
        (
            "start",
            ToMaster::Start {
                tag: 6,
                id: ID.into(),
            },
        ),
        (
            "cancel",
            ToMaster::Cancel {
                tag: 7,
                id: "../etc/passwd".into(),
            },
        ),
        (
            "jobs",
            ToMaster::Jobs {
                tag: 8,
                limit: 10,
                status: "queued".into(),
            },
        ),
        (
            "events",
            ToMaster::Events {
                tag: 9,
                job: ID.into(),
            },
        ),
    ]
}

fn to_client() -> Vec<(&'static str, ToClient)> {
    let mut out = vec![
        (
            "welcome",
            ToClient::Welcome {
                version: PROTOCOL_VERSION,
                max_payload: codec::DEFAULT_MAX_PAYLOAD as u64,
                instance: "0123456789ab".into(),
            },
        ),
        (
            "refused",
            ToClient::Refused {
                message: "bad token".into(),
            },
        ),
        (
            "part",
            ToClient::Part {
                tag: 1,
                data: Bytes::from_static(b"1\n"),
            },
        ),
        (
            "completed",
            ToClient::Completed {
                tag: 1,
                job: 2,
                context: Bytes::from_static(b"ctx"),
                output: Bytes::from_static(b"out"),
            },
        ),
        (
            "stats-reply",
            ToClient::Stats {
                tag: 3,
                json: "{}".into(),
            },
        ),
        (
            "reply",
            ToClient::Reply {
                tag: 5,
                outcome: Outcome::Ok,
                json: format!("{{\"id\":\"{ID}\",\"status\":\"completed\"}}"),
                output: Bytes::from_static(b"result"),
            },
        ),
        (
            "reply-not-found",
            ToClient::Reply {
                tag: 5,
                outcome: Outcome::NotFound,
                json: "{\"error\":\"no such job\"}".into(),
                output: Bytes::new(),
            },
        ),
        (
            "event",
            ToClient::Event {
                tag: 9,
                name: "job-started".into(),
                json: "{\"time\":\"2024-01-01T00:00:00Z\"}".into(),
            },
        ),
    ];
    for reason in [Reason::Overload, Reason::ShuttingDown] {
        out.push((
            if reason == Reason::Overload {
                "failed-overload"
            } else {
                "failed-shutting-down"
            },
            ToClient::Failed {
                tag: 1,
                job: 2,
                reason,
                message: "m".into(),
                context: Bytes::from_static(b"c"),
            },
        ));
    }
    out
}

fn to_handler() -> Vec<(&'static str, ToHandler)> {
    vec![(
        "job",
        ToHandler::Job {
            job: 1,
            module: "echo".into(),
            input: Bytes::from_static(b"hello"),
        },
    )]
}

fn from_handler() -> Vec<(&'static str, FromHandler)> {
    vec![
        (
            "part",
            FromHandler::Part {
                job: 1,
                data: Bytes::from_static(b"1\n"),
            },
        ),
        (
            "done",
            FromHandler::Done {
                job: 1,
                retire: false,
                output: Bytes::from_static(b"hello"),
            },
        ),
        (
            "done-retire",
            FromHandler::Done {
                job: 1,
                retire: true,
                output: Bytes::new(),
            },
        ),
        (
            "failed",
            FromHandler::Failed {
                job: 1,
                reason: Reason::Failed,
                message: "boom".into(),
                retire: true,
            },
        ),
        ("heartbeat", FromHandler::Heartbeat),
    ]
}

fn to_agent() -> Vec<(&'static str, ToAgent)> {
    vec![
        (
            "welcome",
            ToAgent::Welcome {
                version: PROTOCOL_VERSION,
                instance: "0123456789ab".into(),
                max_payload: codec::DEFAULT_MAX_PAYLOAD as u64,
                child_heartbeat_ms: 2000,
            },
        ),
        (
            "refused",
            ToAgent::Refused {
                message: "bad or missing token".into(),
            },
        ),
        (
            "job",
            ToAgent::Job {
                child: 1,
                job: 17,
                module: "echo".into(),
                input: Bytes::from_static(b"hello"),
            },
        ),
        (
            "job-empty",
            ToAgent::Job {
                child: u64::MAX,
                job: 0,
                module: String::new(),
                input: Bytes::new(),
            },
        ),
        ("stop", ToAgent::Stop { child: 1 }),
        ("terminate", ToAgent::Terminate { child: 2 }),
        ("kill", ToAgent::Kill { child: 3 }),
        ("heartbeat", ToAgent::Heartbeat),
    ]
}

fn from_agent() -> Vec<(&'static str, FromAgent)> {
    vec![
        (
            "child-up",
            FromAgent::ChildUp {
                child: 1,
                pid: 4242,
                modules: vec!["echo".into(), "sleep".into(), "sha256".into()],
            },
        ),
        (
            "child-up-no-modules",
            FromAgent::ChildUp {
                child: 2,
                pid: 0,
                modules: vec![],
            },
        ),
        (
            "part",
            FromAgent::Part {
                child: 1,
                job: 17,
                data: Bytes::from_static(b"1\n"),
            },
        ),
        (
            "done",
            FromAgent::Done {
                child: 1,
                job: 17,
                retire: false,
                output: Bytes::from_static(b"hello"),
            },
        ),
        (
            "done-retire-empty",
            FromAgent::Done {
                child: 1,
                job: 18,
                retire: true,
                output: Bytes::new(),
            },
        ),
        (
            "failed",
            FromAgent::Failed {
                child: 1,
                job: 19,
                reason: Reason::UnknownModule,
                message: "no module nope".into(),
                retire: false,
            },
        ),
        (
            "stalled",
            FromAgent::Stalled {
                child: 1,
                silent_ms: 6000,
            },
        ),
        (
            "broken",
            FromAgent::Broken {
                child: 1,
                cause: "sent a bad frame".into(),
            },
        ),
        (
            "child-gone-signal",
            FromAgent::ChildGone {
                child: 1,
                end: ChildEnd::Status {
                    code: None,
                    signal: Some(9),
                    killed: true,
                },
            },
        ),
        (
            "child-gone-code",
            FromAgent::ChildGone {
                child: 2,
                end: ChildEnd::Status {
                    code: Some(-1),
                    signal: None,
                    killed: false,
                },
            },
        ),
        (
            "child-gone-spawn-failed",
            FromAgent::ChildGone {
                child: 3,
                end: ChildEnd::SpawnFailed("wait failed".into()),
            },
        ),
        ("heartbeat", FromAgent::Heartbeat),
        ("draining", FromAgent::Draining),
    ]
}

/// Malformed agent-link frame bodies (no length prefix).
fn bad_agent_bodies() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    // One past the last variant of each enum.
    let mut b = BytesMut::new();
    b.put_u32_le(9);
    out.push(("from-agent-variant-9", b.to_vec()));
    let mut b = BytesMut::new();
    b.put_u32_le(7);
    out.push(("to-agent-variant-7", b.to_vec()));
    // ChildUp claiming 2^64-1 module names in a small frame.
    let mut b = BytesMut::new();
    b.put_u32_le(0);
    b.put_u64_le(1);
    b.put_u32_le(4242);
    b.put_u64_le(u64::MAX);
    out.push(("child-up-modules-len-max", b.to_vec()));
    // ChildGone with ChildEnd variant 2, and with an option tag of 2.
    let mut b = BytesMut::new();
    b.put_u32_le(6);
    b.put_u64_le(1);
    b.put_u32_le(2);
    out.push(("child-end-variant-2", b.to_vec()));
    let mut b = BytesMut::new();
    b.put_u32_le(6);
    b.put_u64_le(1);
    b.put_u32_le(0);
    b.put_u8(2);
    out.push(("child-end-option-tag-2", b.to_vec()));
    // A heartbeat with a payload it may not have.
    let mut b = body(&FromAgent::Heartbeat);
    b.extend_from_slice(b"junk");
    out.push(("heartbeat-trailing-bytes", b));
    // A Refused whose message claims just over the header limit.
    let mut b = BytesMut::new();
    b.put_u32_le(1);
    b.put_u64_le(HEADER_LIMIT as u64 + 1);
    b.put_slice(b"no");
    out.push(("refused-message-over-header-limit", b.to_vec()));
    // A Welcome cut in the middle of its instance.
    let b = body(&to_agent()[0].1);
    out.push(("welcome-truncated", b[..14].to_vec()));
    // A Done whose retire flag is 2.
    let mut b = body(&from_agent()[3].1);
    b[4 + 8 + 8] = 2;
    out.push(("done-bool-2", b));
    out
}

/// Malformed frame bodies (no length prefix).
fn bad_bodies() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = vec![("empty", vec![])];
    let mut b = BytesMut::new();
    b.put_u32_le(99);
    out.push(("unknown-variant-99", b.to_vec()));
    let mut b = BytesMut::new();
    b.put_u32_le(u32::MAX);
    b.put_u64_le(1);
    out.push(("unknown-variant-max", b.to_vec()));
    // Hello::Handler claiming 2^64-1 module names in a 60-byte frame.
    let mut b = BytesMut::new();
    b.put_u32_le(0);
    b.put_u32_le(PROTOCOL_VERSION);
    b.put_u64_le(7);
    b.put_u32_le(4242);
    b.put_slice(&[0x5a; SECRET_LEN]);
    b.put_u64_le(u64::MAX);
    out.push(("hello-modules-len-max", b.to_vec()));
    // The same claiming 2^40 names, then one short name.
    let mut b = BytesMut::new();
    b.put_u32_le(0);
    b.put_u32_le(PROTOCOL_VERSION);
    b.put_u64_le(7);
    b.put_u32_le(4242);
    b.put_slice(&[0x5a; SECRET_LEN]);
    b.put_u64_le(1 << 40);
    b.put_u64_le(1);
    b.put_u8(b'x');
    out.push(("hello-modules-len-2p40", b.to_vec()));
    // Submit whose module name claims u64::MAX / 2 bytes.
    let mut b = BytesMut::new();
    b.put_u32_le(0);
    b.put_u64_le(1);
    b.put_u64_le(u64::MAX / 2);
    b.put_slice(b"echo");
    out.push(("submit-module-len-huge", b.to_vec()));
    // Submit whose context claims just over the header limit.
    let mut b = BytesMut::new();
    b.put_u32_le(0);
    b.put_u64_le(1);
    b.put_u64_le(4);
    b.put_slice(b"echo");
    b.put_u64_le(HEADER_LIMIT as u64 + 1);
    b.put_slice(b"ctx");
    out.push(("submit-context-over-header-limit", b.to_vec()));
    // Submit with context 0xFFFFFFFF.
    let mut b = BytesMut::new();
    b.put_u32_le(0);
    b.put_u64_le(1);
    b.put_u64_le(4);
    b.put_slice(b"echo");
    b.put_u64_le(0xFFFF_FFFF);
    out.push(("submit-context-len-u32-max", b.to_vec()));
    // Invalid UTF-8 module name.
    let mut b = BytesMut::new();
    b.put_u32_le(0);
    b.put_u64_le(1);
    b.put_u64_le(2);
    b.put_slice(&[0xff, 0xfe]);
    b.put_u64_le(0);
    b.put_slice(&[0, 0, 0]);
    out.push(("submit-module-not-utf8", b.to_vec()));
    // Submit options with a bool of 2 and an option tag of 7.
    let mut good = body(&ToMaster::Submit {
        tag: 1,
        module: "e".into(),
        context: Bytes::new(),
        options: SubmitOptions::default(),
        input: Bytes::new(),
    });
    let opts = 4 + 8 + 8 + 1 + 8;
    let mut bad_bool = good.clone();
    bad_bool[opts] = 2;
    out.push(("submit-bool-2", bad_bool));
    good[opts + 2] = 7;
    out.push(("submit-option-tag-7", good));
    // Client hello with token tag 2.
    let mut b = BytesMut::new();
    b.put_u32_le(1);
    b.put_u32_le(PROTOCOL_VERSION);
    b.put_u8(2);
    out.push(("hello-client-option-tag-2", b.to_vec()));
    // Failed with reason index 7 (one past the last reason).
    let mut b = BytesMut::new();
    b.put_u32_le(2);
    b.put_u64_le(1);
    b.put_u32_le(Reason::ALL.len() as u32);
    b.put_u64_le(0);
    b.put_u8(0);
    out.push(("failed-reason-out-of-range", b.to_vec()));
    // Stats with one trailing byte.
    let mut b = body(&ToMaster::Stats { tag: 1 });
    b.push(0);
    out.push(("stats-trailing-byte", b));
    // Submit cut in the middle of its header.
    let b = body(&to_master()[0].1);
    out.push(("submit-truncated-header", b[..9].to_vec()));
    out
}

/// Every seed of every target.
pub fn seeds() -> Vec<Seed> {
    let mut out = Vec::new();
    let mut add = |target: &'static str, name: String, bytes: Vec<u8>| {
        out.push(Seed {
            target,
            name,
            bytes,
        })
    };

    // messages: bare frame bodies.
    for (n, m) in hellos() {
        add("messages", n.into(), body(&m));
    }
    for (n, m) in to_master() {
        add("messages", format!("to-master-{n}"), body(&m));
    }
    for (n, m) in to_client() {
        add("messages", format!("to-client-{n}"), body(&m));
    }
    for (n, m) in to_handler() {
        add("messages", format!("to-handler-{n}"), body(&m));
    }
    for (n, m) in from_handler() {
        add("messages", format!("from-handler-{n}"), body(&m));
    }
    for (n, b) in bad_bodies() {
        add("messages", format!("bad-{n}"), b);
    }

    // frame_decoder: script + stream.
    let whole = |stream: &[u8]| Script::encode(&[], false, false, stream);
    for (n, m) in to_master() {
        add("frame_decoder", format!("to-master-{n}"), whole(&frame(&m)));
    }
    for (n, m) in from_handler() {
        add(
            "frame_decoder",
            format!("from-handler-{n}"),
            whole(&frame(&m)),
        );
    }
    let session: Vec<u8> = to_master().iter().flat_map(|(_, m)| frame(m)).collect();
    let child: Vec<u8> = from_handler().iter().flat_map(|(_, m)| frame(m)).collect();
    add("frame_decoder", "session".into(), whole(&session));
    add(
        "frame_decoder",
        "session-byte-by-byte".into(),
        Script::encode(&[1], false, false, &session),
    );
    add(
        "frame_decoder",
        "session-chunks-3-1-7-pending".into(),
        Script::encode(&[3, 1, 7], true, false, &session),
    );
    add(
        "frame_decoder",
        "child-chunks-5-255".into(),
        Script::encode(&[5, 255], false, false, &child),
    );
    add(
        "frame_decoder",
        "child-byte-by-byte-pending".into(),
        Script::encode(&[1], true, false, &child),
    );
    add("frame_decoder", "empty".into(), whole(&[]));
    add(
        "frame_decoder",
        "length-ffffffff".into(),
        whole(&[0xff, 0xff, 0xff, 0xff, 0, 0]),
    );
    add(
        "frame_decoder",
        "length-ffffffff-after-frame".into(),
        whole(&[&frame(&ToMaster::Stats { tag: 1 })[..], &[0xff; 8]].concat()),
    );
    let max = codec::max_frame_len(MAX_PAYLOAD) as u32;
    add(
        "frame_decoder",
        "length-limit-plus-one".into(),
        whole(&[&(max + 1).to_be_bytes()[..], b"abc"].concat()),
    );
    add(
        "frame_decoder",
        "length-limit-truncated".into(),
        whole(&[&max.to_be_bytes()[..], b"abc"].concat()),
    );
    let submit = frame(&to_master()[0].1);
    add(
        "frame_decoder",
        "truncated-body".into(),
        whole(&submit[..submit.len() - 3]),
    );
    // Found by the fuzzer: a length prefix, then the end of the stream.
    add(
        "frame_decoder",
        "length-then-eof".into(),
        whole(&[0, 0, 0xc1, 0]),
    );
    add(
        "frame_decoder",
        "frame-then-length-then-eof".into(),
        Script::encode(&[2, 9], true, false, &[&submit[..], &[0, 0, 0, 1]].concat()),
    );
    add(
        "frame_decoder",
        "truncated-length".into(),
        Script::encode(&[1], false, false, &[0, 0]),
    );
    add(
        "frame_decoder",
        "zero-length-frame".into(),
        whole(&[0, 0, 0, 0, 0, 0, 0, 0]),
    );
    add(
        "frame_decoder",
        "frame-then-garbage".into(),
        whole(&[&submit[..], b"\x00\x00\x00\x03GET / HTTP/1.1\r\n"].concat()),
    );
    for (n, b) in bad_bodies() {
        add("frame_decoder", format!("bad-{n}"), whole(&with_prefix(&b)));
    }
    for (n, m) in to_client() {
        add("frame_decoder", format!("to-client-{n}"), whole(&frame(&m)));
    }
    add(
        "frame_decoder",
        "to-handler-job".into(),
        whole(&frame(&to_handler()[0].1)),
    );

    // handshake: script + stream; bit 5 keeps the peer silent at the end.
    for (n, m) in hellos() {
        add("handshake", n.into(), whole(&frame(&m)));
    }
    let client = frame(&hellos()[3].1);
    let handler = frame(&hellos()[0].1);
    add(
        "handshake",
        "hello-then-garbage".into(),
        whole(&[&client[..], b"garbage after the hello"].concat()),
    );
    add(
        "handshake",
        "hello-then-session".into(),
        whole(&[&client[..], &session[..]].concat()),
    );
    add(
        "handshake",
        "hello-then-length-ffffffff".into(),
        whole(&[&client[..], &[0xff; 4][..]].concat()),
    );
    add(
        "handshake",
        "hello-byte-by-byte-pending".into(),
        Script::encode(&[1], true, false, &handler),
    );
    add(
        "handshake",
        "hello-then-silence".into(),
        Script::encode(&[], false, true, &client),
    );
    add(
        "handshake",
        "silent".into(),
        Script::encode(&[], false, true, &[]),
    );
    add(
        "handshake",
        "half-length-then-silence".into(),
        Script::encode(&[], false, true, &[0, 0]),
    );
    add(
        "handshake",
        "half-hello-then-silence".into(),
        Script::encode(&[2], true, true, &handler[..handler.len() / 2]),
    );
    add("handshake", "closed".into(), whole(&[]));
    add(
        "handshake",
        "length-then-eof".into(),
        whole(&(handler.len() as u32 - 4).to_be_bytes()),
    );
    add(
        "handshake",
        "truncated-hello".into(),
        whole(&handler[..handler.len() - 1]),
    );
    add(
        "handshake",
        "length-ffffffff".into(),
        whole(&[0xff, 0xff, 0xff, 0xff]),
    );
    add(
        "handshake",
        "length-ffffffff-then-silence".into(),
        Script::encode(&[], false, true, &[0xff, 0xff, 0xff, 0xff]),
    );
    add(
        "handshake",
        "submit-instead-of-hello".into(),
        whole(&submit),
    );
    add(
        "handshake",
        "http-instead-of-hello".into(),
        whole(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
    );
    for (n, b) in bad_bodies() {
        if n.starts_with("hello") || n.starts_with("unknown") || n == "empty" {
            add("handshake", format!("bad-{n}"), whole(&with_prefix(&b)));
        }
    }
    let mut two = BytesMut::new();
    two.put_u32_le(2);
    two.put_u32_le(PROTOCOL_VERSION);
    add(
        "handshake",
        "hello-variant-2".into(),
        whole(&with_prefix(&two)),
    );

    // agent_link: script + stream, as frame_decoder; a one-frame stream
    // less its prefix is also a bare body.
    for (n, m) in to_agent() {
        add("agent_link", format!("to-agent-{n}"), whole(&frame(&m)));
    }
    for (n, m) in from_agent() {
        add("agent_link", format!("from-agent-{n}"), whole(&frame(&m)));
    }
    add(
        "agent_link",
        "hello-agent".into(),
        whole(&frame(&Hello::Agent(AgentHello {
            version: PROTOCOL_VERSION,
            token: Some("s3cret-token".into()),
            name: "box1".into(),
            slots: 4,
            pid: 4242,
        }))),
    );
    let orders: Vec<u8> = to_agent().iter().flat_map(|(_, m)| frame(m)).collect();
    let reports: Vec<u8> = from_agent().iter().flat_map(|(_, m)| frame(m)).collect();
    add("agent_link", "link-orders".into(), whole(&orders));
    add("agent_link", "link-reports".into(), whole(&reports));
    add(
        "agent_link",
        "link-reports-byte-by-byte-pending".into(),
        Script::encode(&[1], true, false, &reports),
    );
    add(
        "agent_link",
        "link-orders-chunks-3-1-7".into(),
        Script::encode(&[3, 1, 7], false, false, &orders),
    );
    let job = frame(&to_agent()[2].1);
    add(
        "agent_link",
        "job-truncated".into(),
        whole(&job[..job.len() - 2]),
    );
    add(
        "agent_link",
        "job-then-length-ffffffff".into(),
        whole(&[&job[..], &[0xff; 4][..]].concat()),
    );
    add(
        "agent_link",
        "length-limit-plus-one".into(),
        whole(&[&(max + 1).to_be_bytes()[..], b"abc"].concat()),
    );
    for (n, b) in bad_agent_bodies() {
        add("agent_link", format!("bad-{n}"), whole(&with_prefix(&b)));
    }

    // http_routes: "METHOD TARGET" line, headers, blank line, body;
    // requests separated by a "%%" line.
    for (n, text) in HTTP_SEEDS {
        add("http_routes", (*n).into(), text.as_bytes().to_vec());
    }
    let mut big = b"POST /jobs/echo\n\n".to_vec();
    big.resize(big.len() + MAX_PAYLOAD + 1, b'x');
    add("http_routes", "submit-too-big".into(), big);
    out
}

/// Seeds of the `http_routes` target (see `fuzz/fuzz_targets/http_routes.rs`).
const HTTP_SEEDS: &[(&str, &str)] = &[
    ("submit", "POST /jobs/echo\n\nhello"),
    ("submit-wait", "POST /jobs/echo?wait=1.5\n\nhello"),
    ("submit-wait-max", "POST /jobs/hang?wait=3600\n\n"),
    ("submit-wait-over-max", "POST /jobs/echo?wait=3600.0001\n\n"),
    ("submit-wait-nan", "POST /jobs/echo?wait=NaN\n\n"),
    ("submit-wait-inf", "POST /jobs/echo?wait=inf\n\n"),
    ("submit-wait-negative", "POST /jobs/echo?wait=-1\n\n"),
    ("submit-wait-exp", "POST /jobs/echo?wait=1e308\n\n"),
    ("submit-timeout", "POST /jobs/hang?timeout=0.001&wait=10\n\n"),
    ("submit-timeout-year", "POST /jobs/echo?timeout=31536000\n\n"),
    (
        "submit-start-later",
        "POST /jobs/echo?start_later=true\n\nlater%%\nPOST /jobs/0123456789ab-1/start\n\n%%\nGET /jobs/0123456789ab-1/result?wait=1\n\n",
    ),
    ("submit-start-later-and-wait", "POST /jobs/echo?start_later=1&wait=1\n\n"),
    ("submit-bool-bad", "POST /jobs/echo?start_later=yes\n\n"),
    ("submit-twice", "POST /jobs/echo?wait=1&wait=2\n\n"),
    ("submit-unknown-param", "POST /jobs/echo?nope=1\n\n"),
    ("submit-unknown-module", "POST /jobs/nope?wait=1\n\n"),
    ("submit-fail", "POST /jobs/fail?wait=1\n\n"),
    ("submit-crash", "POST /jobs/crash?wait=1\n\n"),
    ("submit-parts", "POST /jobs/parts?wait=1\n\nabc"),
    ("submit-percent-module", "POST /jobs/%65cho?wait=1\n\n"),
    ("submit-bad-percent", "POST /jobs/%FF?wait=1\n\n"),
    ("submit-bad-query-encoding", "POST /jobs/echo?wait=%FF\n\n"),
    ("submit-json-body", "POST /jobs/echo\ncontent-type: application/json\n\n{\"a\":1}"),
    (
        "overload",
        "POST /jobs/hang\n\n%%\nPOST /jobs/hang\n\n%%\nPOST /jobs/hang\n\n%%\nPOST /jobs/hang\n\n%%\nPOST /jobs/hang\n\n%%\nPOST /jobs/hang\n\n%%\nPOST /jobs/hang\n\n%%\nPOST /jobs/hang?wait=1\n\n",
    ),
    ("status", "POST /jobs/echo\n\nx%%\nGET /jobs/0123456789ab-1\n\n"),
    ("status-unknown", "GET /jobs/0123456789ab-99\n\n"),
    ("status-other-instance", "GET /jobs/ffffffffffff-1\n\n"),
    ("status-bad-id", "GET /jobs/..%2Fetc\n\n"),
    ("status-id-zero", "GET /jobs/0123456789ab-0\n\n"),
    ("status-id-overflow", "GET /jobs/0123456789ab-18446744073709551616\n\n"),
    ("status-with-param", "GET /jobs/0123456789ab-1?x=1\n\n"),
    ("result-wait", "POST /jobs/hang\n\n%%\nGET /jobs/0123456789ab-1/result?wait=5\n\n"),
    ("cancel", "POST /jobs/hang\n\n%%\nDELETE /jobs/0123456789ab-1\n\n%%\nGET /jobs/0123456789ab-1\n\n"),
    ("start-not-later", "POST /jobs/echo\n\n%%\nPOST /jobs/0123456789ab-1/start\n\n"),
    ("list", "POST /jobs/echo\n\n%%\nGET /jobs?limit=10&status=completed\n\n"),
    ("list-limit-zero", "GET /jobs?limit=0\n\n"),
    ("list-limit-huge", "GET /jobs?limit=99999999999999999999\n\n"),
    ("list-status-bad", "GET /jobs?status=nope\n\n"),
    ("stats", "GET /stats\n\n"),
    ("metrics", "GET /metrics\n\n"),
    ("healthz", "GET /healthz\n\n"),
    ("events", "GET /events?job=0123456789ab-1\n\n"),
    ("events-bad-job", "GET /events?job=nope\n\n"),
    ("wrong-method", "PUT /jobs/echo\n\n"),
    ("head", "HEAD /jobs/hang\n\n%%\nHEAD /stats\n\n%%\nHEAD /jobs/0123456789ab-1\n\n"),
    ("no-route", "GET /nope/../jobs\n\n"),
    ("bad-uri", "GET not a uri\n\n"),
    ("header-auth", "GET /stats\nauthorization: Bearer x\n\n"),
    ("token-missing", "TOKEN\nGET /stats\n\n%%\nPOST /jobs/echo\n\nx"),
    (
        "token-ok",
        "TOKEN\nPOST /jobs/echo?wait=1\nauthorization: Bearer s3cret-token\n\nhi%%\nGET /jobs/0123456789ab-1\nauthorization: Bearer s3cret-token\n\n",
    ),
    ("token-wrong", "TOKEN\nGET /jobs\nauthorization: Bearer s3cret-tokeN\n\n"),
    ("token-lowercase-bearer", "TOKEN\nGET /stats\nauthorization: bearer s3cret-token\n\n"),
    ("token-open-routes", "TOKEN\nGET /healthz\n\n%%\nGET /metrics\n\n%%\nGET /healthz/\n\n"),
    ("token-no-route", "TOKEN\nGET /nope\n\n%%\nPUT /jobs/echo\n\n"),
];
