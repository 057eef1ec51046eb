//! The hand-read headers (`Message::decode_header`, `codec::fast_header`)
//! checked against bincode. A module of its own: it uses both the codec and
//! the messages, which must not import each other.

use crate::codec::{by_bincode, fast_header, to_frame};
use crate::jobs::SubmitOptions;
use crate::messages::*;
use crate::reason::Reason;
use bytes::Bytes;
use std::fmt::Debug;

/// The hand-read headers (`Message::decode_header`) against bincode:
/// every message they read, they read as bincode does, and every header
/// they take is one bincode takes, to the byte; checked on well-formed
/// submits and answers of many shapes and on each with one byte
/// changed or cut short.
#[test]
fn hand_read_headers_agree_with_bincode() {
    fn check<M: Message + PartialEq + Debug>(msg: &M, fast_expected: bool) -> usize {
        let frame = to_frame(msg).unwrap();
        let body = &frame[4..];
        let fast = fast_header::<M>(body);
        assert_eq!(fast.is_some(), fast_expected, "{msg:?}");
        let mut hand_read = 0;
        // The frame as sent, then each byte of it changed (three ways)
        // and each prefix of it.
        let mut variants: Vec<Vec<u8>> = vec![body.to_vec()];
        for i in 0..body.len() {
            for delta in [1u8, 0x80, 0xff] {
                let mut v = body.to_vec();
                v[i] = v[i].wrapping_add(delta);
                variants.push(v);
            }
            variants.push(body[..i].to_vec());
        }
        for v in variants {
            if let Some((m, used)) = fast_header::<M>(&v) {
                hand_read += 1;
                let (want, want_used) = by_bincode::<M>(&v)
                    .unwrap_or_else(|| panic!("hand-read {m:?} where bincode refuses {v:?}"));
                assert_eq!((m, used), (want, want_used), "{v:?}");
            }
        }
        hand_read
    }
    let mut read = 0;
    for (i, module) in ["echo", "", "sha256", "ünïcødé-模块", &"m".repeat(300)]
        .into_iter()
        .enumerate()
    {
        for (context, timeout_ms, priority, retries, detach) in [
            (&b""[..], None, crate::jobs::Priority::Normal, 0, false),
            (&b"ctx"[..], Some(0), crate::jobs::Priority::High, 3, true),
            (
                &[0u8, 1, 2, 255][..],
                Some(u64::MAX),
                crate::jobs::Priority::Low,
                u32::MAX,
                false,
            ),
        ] {
            let msg = ToMaster::Submit {
                tag: u64::MAX - i as u64,
                module: module.to_owned(),
                context: Bytes::copy_from_slice(context),
                options: SubmitOptions {
                    detach,
                    start_later: !detach,
                    timeout_ms,
                    priority,
                    retries,
                },
                input: Bytes::from_static(b"input bytes"),
            };
            read += check(&msg, true);
        }
    }
    for (job, retire) in [(0, false), (1, true), (u64::MAX, false)] {
        read += check(
            &FromHandler::Done {
                job,
                retire,
                output: Bytes::from_static(b"out"),
            },
            true,
        );
        read += check(
            &FromHandler::Part {
                job,
                data: Bytes::new(),
            },
            true,
        );
    }
    // Left to bincode whole.
    check(&ToMaster::Stats { tag: 9 }, false);
    check(&FromHandler::Heartbeat, false);
    check(
        &FromHandler::Failed {
            job: 4,
            reason: Reason::Failed,
            message: "no".into(),
            retire: false,
        },
        false,
    );
    // Changed bytes the hand reader still takes (a tag, a job number,
    // a length that still fits) were compared above: there are many.
    assert!(read > 1000, "only {read} hand-read variants compared");
}
