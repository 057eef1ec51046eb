//! Checks the worked hex examples of `docs/protocol.md` (section 4) against
//! the real encoder. Clients in other languages are written from that page
//! alone, so a wire change that is not carried into its examples must fail
//! the build rather than mislead them.
//!
//! Each example is a `### TITLE (N bytes)` heading followed by one ```text
//! block. On every line of the block the leading two-digit hex tokens are
//! the bytes; the rest of the line is a comment. A block may hold several
//! frames back to back; they are split by their length prefixes. Every
//! example in the section must be listed here, and every one listed here
//! must be in the section, so none goes unchecked. Each frame of the
//! document must be the encoder's frame byte for byte, and must decode
//! back to the very message listed here.
//!
//! The agent link (section 3.8) is checked the same way, and its index
//! tables against the encoder's variant indexes.

use bytes::{Bytes, BytesMut};
use std::collections::BTreeMap;
use std::fmt::Debug;
use taskmaster_proto::agent::{AgentHello, ChildEnd, FromAgent, ToAgent};
use taskmaster_proto::codec::{decode, to_frame, LENGTH_BYTES};
use taskmaster_proto::jobs::{JobRef, JobStatus, JobView, Outcome, SubmitOptions};
use taskmaster_proto::messages::{
    ClientHello, FromHandler, HandlerHello, Hello, Message, ToClient, ToHandler, ToMaster,
};
use taskmaster_proto::reason::Reason;

/// The instance prefix every example uses.
const INSTANCE: &str = "3f9a0c12b7e4";

/// One example as the document gives it.
struct Example {
    /// The byte count the heading announces.
    declared: usize,
    /// The bytes of its block, prefixes included.
    bytes: Vec<u8>,
}

/// The text of section 4, between its heading and the next `## `.
fn section_4(doc: &str) -> &str {
    let start = doc
        .find("\n## 4. Worked hex examples")
        .expect("docs/protocol.md has no section 4");
    let rest = &doc[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    &rest[..end]
}

/// The bytes at the start of one line: tokens of exactly two lowercase hex
/// digits, up to the first token that is not one (the comment).
fn line_bytes(line: &str) -> Vec<u8> {
    line.split_whitespace()
        .map_while(|tok| {
            let hex = tok.len() == 2
                && tok
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            hex.then(|| u8::from_str_radix(tok, 16).expect("two hex digits"))
        })
        .collect()
}

/// Every example of section 4, by heading title (without the byte count).
fn parse_examples(section: &str) -> BTreeMap<String, Example> {
    let mut out = BTreeMap::new();
    let mut title: Option<(String, usize)> = None;
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        if let Some(heading) = line.strip_prefix("### ") {
            let (name, count) = heading
                .strip_suffix(" bytes)")
                .and_then(|h| h.rsplit_once(" ("))
                .unwrap_or_else(|| panic!("heading {heading:?} does not end in (N bytes)"));
            let declared = count
                .parse()
                .unwrap_or_else(|_| panic!("bad byte count in heading {heading:?}"));
            title = Some((name.to_owned(), declared));
        } else if line.trim_end() == "```text" {
            let (name, declared) = title
                .take()
                .unwrap_or_else(|| panic!("a hex block without its own heading: {line:?}"));
            let mut bytes = Vec::new();
            for body in lines.by_ref() {
                if body.trim_end() == "```" {
                    break;
                }
                bytes.extend(line_bytes(body));
            }
            let dup = out.insert(name.clone(), Example { declared, bytes });
            assert!(dup.is_none(), "two examples titled {name:?}");
        }
    }
    out
}

/// Splits a run of frames by their 4-byte big-endian length prefixes.
fn split_frames(name: &str, mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        assert!(bytes.len() >= 4, "{name}: a frame shorter than its prefix");
        let len = u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
        assert!(
            bytes.len() >= 4 + len,
            "{name}: prefix says {len} bytes, only {} follow",
            bytes.len() - 4
        );
        frames.push(bytes[..4 + len].to_vec());
        bytes = &bytes[4 + len..];
    }
    frames
}

/// Decodes a frame of the document (prefix included) and compares it with
/// the message it should be; `Err` says how it differs.
type DecodesBack = Box<dyn Fn(&[u8]) -> Result<(), String>>;

/// One frame an example must show.
struct Want {
    /// The encoder's frame, prefix included.
    bytes: Vec<u8>,
    /// Checks that the document's frame decodes back to the message.
    decodes_back: DecodesBack,
}

fn frame<M: Message + PartialEq + Debug + 'static>(msg: M) -> Want {
    let bytes = to_frame(&msg).expect("the example encodes").to_vec();
    let decodes_back = Box::new(move |doc: &[u8]| {
        let got = decode::<M>(BytesMut::from(&doc[LENGTH_BYTES..]))
            .map_err(|e| format!("does not decode as {}: {e}", std::any::type_name::<M>()))?;
        if got == msg {
            Ok(())
        } else {
            Err(format!("decodes to {got:?}, not {msg:?}"))
        }
    });
    Want {
        bytes,
        decodes_back,
    }
}

fn id(job: u64) -> String {
    format!("{INSTANCE}-{job}")
}

/// The `Reply` JSON comes from the real types, so the document's JSON is
/// also what serde makes of them (field order, omitted fields).
fn json<T: serde::Serialize>(body: &T) -> String {
    serde_json::to_string(body).expect("JSON encodes")
}

/// What each example shows, by title.
fn expected() -> Vec<(&'static str, Vec<Want>)> {
    let completed_17 = JobRef {
        id: id(17),
        status: JobStatus::Completed,
    };
    vec![
        (
            "Client hello, token None",
            vec![frame(Hello::Client(ClientHello {
                version: 3,
                token: None,
            }))],
        ),
        (
            "Client hello, token Some(\"abc\")",
            vec![frame(Hello::Client(ClientHello {
                version: 3,
                token: Some("abc".into()),
            }))],
        ),
        (
            "Welcome: max_payload 16 MiB, instance \"3f9a0c12b7e4\"",
            vec![frame(ToClient::Welcome {
                version: 3,
                max_payload: 16 * 1024 * 1024,
                instance: INSTANCE.into(),
            })],
        ),
        (
            "Refused: message \"no\"",
            vec![frame(ToClient::Refused {
                message: "no".into(),
            })],
        ),
        (
            "Submit: tag 1, module \"echo\", empty context, default options, input \"hi\"",
            vec![frame(ToMaster::Submit {
                tag: 1,
                module: "echo".into(),
                context: Bytes::new(),
                options: SubmitOptions::default(),
                input: Bytes::from_static(b"hi"),
            })],
        ),
        (
            "Part: tag 1, data \"1\\n\"",
            vec![frame(ToClient::Part {
                tag: 1,
                data: Bytes::from_static(b"1\n"),
            })],
        ),
        (
            "Completed: tag 1, job 17, empty context, output \"hi\"",
            vec![frame(ToClient::Completed {
                tag: 1,
                job: 17,
                context: Bytes::new(),
                output: Bytes::from_static(b"hi"),
            })],
        ),
        (
            "Failed: tag 4, job 19, overload, message \"busy\", empty context",
            vec![frame(ToClient::Failed {
                tag: 4,
                job: 19,
                reason: Reason::Overload,
                message: "busy".into(),
                context: Bytes::new(),
            })],
        ),
        (
            "Stats request: tag 2",
            vec![frame(ToMaster::Stats { tag: 2 })],
        ),
        (
            "Stats answer: tag 2, json \"{}\"",
            vec![frame(ToClient::Stats {
                tag: 2,
                json: "{}".into(),
            })],
        ),
        (
            "Submit: tag 2, start later, time limit 1.5 s, priority high, 2 retries, input \"hi\"",
            vec![frame(ToMaster::Submit {
                tag: 2,
                module: "echo".into(),
                context: Bytes::new(),
                options: SubmitOptions {
                    detach: true,
                    start_later: true,
                    timeout_ms: Some(1500),
                    priority: taskmaster_proto::Priority::High,
                    retries: 2,
                },
                input: Bytes::from_static(b"hi"),
            })],
        ),
        (
            "Reply to that submit: Ok, JobRef",
            vec![frame(ToClient::Reply {
                tag: 2,
                outcome: Outcome::Ok,
                json: json(&JobRef {
                    id: id(18),
                    status: JobStatus::StartLater,
                }),
                output: Bytes::new(),
            })],
        ),
        (
            "Status request: tag 3, id \"3f9a0c12b7e4-17\"",
            vec![frame(ToMaster::Status { tag: 3, id: id(17) })],
        ),
        (
            "Reply to the Status request: Ok, JobView",
            vec![frame(ToClient::Reply {
                tag: 3,
                outcome: Outcome::Ok,
                json: json(&JobView {
                    id: id(17),
                    module: "echo".into(),
                    status: JobStatus::Completed,
                    reason: None,
                    message: None,
                    created_at: "2026-11-23T10:00:00.123Z".into(),
                    started_at: Some("2026-11-23T10:00:00.125Z".into()),
                    finished_at: Some("2026-11-23T10:00:00.127Z".into()),
                }),
                output: Bytes::new(),
            })],
        ),
        (
            "Result request: tag 5, wait up to 2 s",
            vec![frame(ToMaster::Result {
                tag: 5,
                id: id(17),
                wait_ms: 2000,
            })],
        ),
        (
            "Reply to the Result request: Ok, output \"hi\"",
            vec![frame(ToClient::Reply {
                tag: 5,
                outcome: Outcome::Ok,
                json: json(&completed_17),
                output: Bytes::from_static(b"hi"),
            })],
        ),
        (
            "Start request: tag 6, id \"3f9a0c12b7e4-18\"",
            vec![frame(ToMaster::Start { tag: 6, id: id(18) })],
        ),
        (
            "Cancel request: tag 7, id \"3f9a0c12b7e4-17\"",
            vec![frame(ToMaster::Cancel { tag: 7, id: id(17) })],
        ),
        (
            "Reply to the Cancel request: Conflict, the job has completed",
            vec![frame(ToClient::Reply {
                tag: 7,
                outcome: Outcome::Conflict,
                json: json(&completed_17),
                output: Bytes::new(),
            })],
        ),
        (
            "Jobs request: tag 8, limit 100, status \"failed\"",
            vec![frame(ToMaster::Jobs {
                tag: 8,
                limit: 100,
                status: "failed".into(),
            })],
        ),
        (
            "Reply to a Result request: Failed, reason failed, message \"boom\"",
            vec![frame(ToClient::Reply {
                tag: 9,
                outcome: Outcome::Failed,
                json: json(&taskmaster_proto::jobs::FailureBody {
                    id: id(19),
                    status: JobStatus::Failed,
                    reason: Reason::Failed,
                    message: "boom".into(),
                }),
                output: Bytes::new(),
            })],
        ),
        (
            "Reply to a Status request: NotFound",
            vec![frame(ToClient::Reply {
                tag: 10,
                outcome: Outcome::NotFound,
                json: json(&taskmaster_proto::jobs::ErrorBody {
                    error: format!(
                        "no job {} (unknown, evicted, or from another master run)",
                        id(99)
                    ),
                }),
                output: Bytes::new(),
            })],
        ),
        (
            "Events request: tag 11, every job",
            vec![frame(ToMaster::Events {
                tag: 11,
                job: String::new(),
            })],
        ),
        (
            "Event: tag 11, job-started",
            vec![frame(ToClient::Event {
                tag: 11,
                name: "job-started".into(),
                json: format!(
                    r#"{{"time":"2026-11-23T10:00:00.125Z","pid":4660,"job":"{}","module":"echo"}}"#,
                    id(17)
                ),
            })],
        ),
        (
            "Handler hello: child_id 3, pid 0x1234, secret 32 × ab, modules [\"echo\", \"pid\"]",
            vec![frame(Hello::Handler(HandlerHello {
                version: 3,
                child_id: 3,
                pid: 0x1234,
                secret: [0xab; 32],
                modules: vec!["echo".into(), "pid".into()],
            }))],
        ),
        (
            "Job: job 1, module \"echo\", input \"hi\"",
            vec![frame(ToHandler::Job {
                job: 1,
                module: "echo".into(),
                input: Bytes::from_static(b"hi"),
            })],
        ),
        (
            "Handler part: job 1, data \"1\\n\"",
            vec![frame(FromHandler::Part {
                job: 1,
                data: Bytes::from_static(b"1\n"),
            })],
        ),
        (
            "Done: job 1, retire false, output \"hi\"",
            vec![frame(FromHandler::Done {
                job: 1,
                retire: false,
                output: Bytes::from_static(b"hi"),
            })],
        ),
        (
            "Handler failed: job 1, reason failed, message \"boom\", retire true",
            vec![frame(FromHandler::Failed {
                job: 1,
                reason: Reason::Failed,
                message: "boom".into(),
                retire: true,
            })],
        ),
    ]
    .into_iter()
    .chain(agent_link())
    .collect()
}

/// The agent link's examples (section 3.8): agent `box1` joins the same
/// master run and its child 1 runs job 17.
fn agent_link() -> Vec<(&'static str, Vec<Want>)> {
    vec![
        (
            "Agent hello: token Some(\"abc\"), name \"box1\", slots 4, pid 0x1234",
            vec![frame(Hello::Agent(AgentHello {
                version: 3,
                token: Some("abc".into()),
                name: "box1".into(),
                slots: 4,
                pid: 0x1234,
            }))],
        ),
        (
            "Agent welcome: instance \"3f9a0c12b7e4\", max_payload 16 MiB, child heartbeat 2000 ms",
            vec![frame(ToAgent::Welcome {
                version: 3,
                instance: INSTANCE.into(),
                max_payload: 16 * 1024 * 1024,
                child_heartbeat_ms: 2000,
            })],
        ),
        (
            "Agent refused: message \"bad or missing token\"",
            vec![frame(ToAgent::Refused {
                message: "bad or missing token".into(),
            })],
        ),
        (
            "Agent job: child 1, job 17, module \"echo\", input \"hi\"",
            vec![frame(ToAgent::Job {
                child: 1,
                job: 17,
                module: "echo".into(),
                input: Bytes::from_static(b"hi"),
            })],
        ),
        (
            "Agent stop: child 1",
            vec![frame(ToAgent::Stop { child: 1 })],
        ),
        (
            "Agent link heartbeat, master to agent",
            vec![frame(ToAgent::Heartbeat)],
        ),
        (
            "Agent child up: child 1, pid 0x2345, modules [\"echo\", \"pid\"]",
            vec![frame(FromAgent::ChildUp {
                child: 1,
                pid: 0x2345,
                modules: vec!["echo".into(), "pid".into()],
            })],
        ),
        (
            "Agent part: child 1, job 17, data \"1\\n\"",
            vec![frame(FromAgent::Part {
                child: 1,
                job: 17,
                data: Bytes::from_static(b"1\n"),
            })],
        ),
        (
            "Agent done: child 1, job 17, retire false, output \"hi\"",
            vec![frame(FromAgent::Done {
                child: 1,
                job: 17,
                retire: false,
                output: Bytes::from_static(b"hi"),
            })],
        ),
        (
            "Agent failed: child 1, job 17, reason failed, message \"boom\", retire true",
            vec![frame(FromAgent::Failed {
                child: 1,
                job: 17,
                reason: Reason::Failed,
                message: "boom".into(),
                retire: true,
            })],
        ),
        (
            "Agent child gone: child 1, killed by signal 9",
            vec![frame(FromAgent::ChildGone {
                child: 1,
                end: ChildEnd::Status {
                    code: None,
                    signal: Some(9),
                    killed: true,
                },
            })],
        ),
        (
            "Agent link heartbeat, agent to master",
            vec![frame(FromAgent::Heartbeat)],
        ),
        ("Agent draining", vec![frame(FromAgent::Draining)]),
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn worked_examples_match_the_encoder() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
    let doc = std::fs::read_to_string(path).expect("read docs/protocol.md");
    let mut examples = parse_examples(section_4(&doc));
    for (title, want) in expected() {
        let example = examples
            .remove(title)
            .unwrap_or_else(|| panic!("docs/protocol.md has no example {title:?}"));
        let frames = split_frames(title, &example.bytes);
        assert_eq!(
            frames.len(),
            want.len(),
            "{title}: {} frames in the document, {} expected",
            frames.len(),
            want.len()
        );
        for (got, want) in frames.iter().zip(&want) {
            assert_eq!(
                hex(got),
                hex(&want.bytes),
                "{title}: the document (left) differs from the encoder (right)"
            );
            if let Err(e) = (want.decodes_back)(got) {
                panic!("{title}: the document's frame {e}");
            }
        }
        assert_eq!(
            example.declared,
            example.bytes.len(),
            "{title}: the heading's byte count is wrong"
        );
    }
    assert!(
        examples.is_empty(),
        "examples in docs/protocol.md that this test does not check: {:?}",
        examples.keys().collect::<Vec<_>>()
    );
}

#[test]
fn the_document_states_the_current_version() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
    let doc = std::fs::read_to_string(path).expect("read docs/protocol.md");
    let want = format!(
        "Protocol version: **{}**",
        taskmaster_proto::PROTOCOL_VERSION
    );
    assert!(doc.contains(&want), "docs/protocol.md lacks {want:?}");
}

/// The rows `| INDEX | `NAME` |` of the first table after `marker` in
/// `text` (up to the first blank line after the table starts).
fn table_rows(text: &str, marker: &str) -> Vec<(u32, String)> {
    let start = text
        .find(marker)
        .unwrap_or_else(|| panic!("docs/protocol.md lacks {marker:?}"));
    let mut rows = Vec::new();
    let mut in_table = false;
    for line in text[start..].lines().skip(1) {
        if !line.starts_with('|') {
            if in_table {
                break;
            }
            continue;
        }
        in_table = true;
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if let (Ok(index), Some(name)) = (cells[1].parse(), cells.get(2)) {
            rows.push((index, name.trim_matches('`').to_owned()));
        }
    }
    rows
}

/// The variant index (the header's first `u32`) of a message's frame.
fn index<M: Message>(msg: &M) -> u32 {
    let frame = to_frame(msg).expect("encodes");
    u32::from_le_bytes(
        frame[LENGTH_BYTES..LENGTH_BYTES + 4]
            .try_into()
            .expect("4 bytes"),
    )
}

/// `Debug`'s variant name: the text before the first `{`, `(` or space.
fn variant_name<T: Debug>(value: &T) -> String {
    let text = format!("{value:?}");
    text.split(['{', '(', ' '])
        .next()
        .expect("a name")
        .to_owned()
}

/// Section 3.8's index tables give each variant of `AgentHello`'s
/// `Hello`, `ToAgent`, `FromAgent` and `ChildEnd` the index the encoder
/// writes, and list every variant.
#[test]
fn agent_link_tables_match_the_encoder() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
    let doc = std::fs::read_to_string(path).expect("read docs/protocol.md");
    let start = doc
        .find("\n### 3.8 The agent link")
        .expect("docs/protocol.md has no section 3.8");
    let section = &doc[start..doc[start..].find("\n## ").map_or(doc.len(), |i| start + i)];

    fn check(rows: &[(u32, String)], table: &str, want: Vec<(u32, String)>) {
        assert_eq!(
            rows.len(),
            want.len(),
            "the {table} table lists {rows:?}, the encoder has {want:?}"
        );
        for w in &want {
            assert!(
                rows.contains(w),
                "the {table} table lacks `| {} | `{}` |`: {rows:?}",
                w.0,
                w.1
            );
        }
    }

    let to_agent = [
        ToAgent::Welcome {
            version: 3,
            instance: INSTANCE.into(),
            max_payload: 1,
            child_heartbeat_ms: 0,
        },
        ToAgent::Refused {
            message: String::new(),
        },
        ToAgent::Job {
            child: 1,
            job: 1,
            module: String::new(),
            input: Bytes::new(),
        },
        ToAgent::Stop { child: 1 },
        ToAgent::Terminate { child: 1 },
        ToAgent::Kill { child: 1 },
        ToAgent::Heartbeat,
    ];
    check(
        &table_rows(section, "**`ToAgent`**"),
        "ToAgent",
        to_agent
            .iter()
            .map(|m| (index(m), variant_name(m)))
            .collect(),
    );

    let from_agent = [
        FromAgent::ChildUp {
            child: 1,
            pid: 1,
            modules: vec![],
        },
        FromAgent::Part {
            child: 1,
            job: 1,
            data: Bytes::new(),
        },
        FromAgent::Done {
            child: 1,
            job: 1,
            retire: false,
            output: Bytes::new(),
        },
        FromAgent::Failed {
            child: 1,
            job: 1,
            reason: Reason::Failed,
            message: String::new(),
            retire: false,
        },
        FromAgent::Stalled {
            child: 1,
            silent_ms: 1,
        },
        FromAgent::Broken {
            child: 1,
            cause: String::new(),
        },
        FromAgent::ChildGone {
            child: 1,
            end: ChildEnd::SpawnFailed(String::new()),
        },
        FromAgent::Heartbeat,
        FromAgent::Draining,
    ];
    check(
        &table_rows(section, "**`FromAgent`**"),
        "FromAgent",
        from_agent
            .iter()
            .map(|m| (index(m), variant_name(m)))
            .collect(),
    );

    // `ChildEnd` is not a message of its own: its index is the `u32`
    // after `ChildGone`'s index and child id.
    let ends = [
        ChildEnd::Status {
            code: None,
            signal: None,
            killed: false,
        },
        ChildEnd::SpawnFailed(String::new()),
    ];
    let end_index = |end: &ChildEnd| {
        let frame = to_frame(&FromAgent::ChildGone {
            child: 1,
            end: end.clone(),
        })
        .expect("encodes");
        let at = LENGTH_BYTES + 4 + 8;
        u32::from_le_bytes(frame[at..at + 4].try_into().expect("4 bytes"))
    };
    check(
        &table_rows(section, "**`ChildEnd`**"),
        "ChildEnd",
        ends.iter()
            .map(|e| (end_index(e), variant_name(e)))
            .collect(),
    );

    // `Hello::Agent` in section 3.1's table.
    let hello = Hello::Agent(AgentHello {
        version: 3,
        token: None,
        name: String::new(),
        slots: 1,
        pid: 1,
    });
    let hellos = table_rows(&doc, "### 3.1 `Hello`");
    assert!(
        hellos.contains(&(index(&hello), "Agent".to_owned())),
        "section 3.1 lacks `| {} | `Agent` |`: {hellos:?}",
        index(&hello)
    );
}
