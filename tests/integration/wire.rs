//! Bad peers on the socket: garbage, oversized and truncated frames, silence,
//! a wrong secret. Each is closed and logged; the master serves everyone else.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use taskmaster_proto::codec;
use taskmaster_proto::messages::{ClientHello, HandlerHello, Hello, PROTOCOL_VERSION};
use taskmaster_tests::Master;

/// True when the master closes the connection (EOF or reset) in time.
fn closed_by_master(mut stream: TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

async fn still_serves(master: &Master) {
    let client = master.client().await;
    assert_eq!(client.do_task("echo", "ok").await.unwrap(), "ok".as_bytes());
}

#[tokio::test]
async fn garbage_is_closed_and_others_are_served() {
    let master = Master::ready(&["--pool-start", "1"]);
    let mut s = TcpStream::connect(&master.addr).unwrap();
    s.write_all(&[0, 0, 0, 12, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8])
        .unwrap();
    assert!(closed_by_master(s, Duration::from_secs(5)));
    master.wait_log("closing connection", Duration::from_secs(5));
    still_serves(&master).await;
}

#[tokio::test]
async fn oversized_length_prefix_is_closed_before_allocating() {
    let master = Master::ready(&["--pool-start", "1", "--max-payload", "4096"]);
    let mut s = TcpStream::connect(&master.addr).unwrap();
    s.write_all(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]).unwrap();
    assert!(closed_by_master(s, Duration::from_secs(5)));
    // A client over the limit after a good hello is closed too.
    let mut s = TcpStream::connect(&master.addr).unwrap();
    let hello = Hello::Client(ClientHello {
        version: PROTOCOL_VERSION,
        token: None,
    });
    s.write_all(&codec::to_frame(&hello).unwrap()).unwrap();
    s.write_all(&(1u32 << 30).to_be_bytes()).unwrap();
    assert!(closed_by_master(s, Duration::from_secs(5)));
    still_serves(&master).await;
}

#[tokio::test]
async fn truncated_frame_then_eof_is_closed() {
    let master = Master::ready(&["--pool-start", "1"]);
    let mut s = TcpStream::connect(&master.addr).unwrap();
    s.write_all(&[0, 0, 0, 100, 1, 2, 3]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(closed_by_master(s, Duration::from_secs(5)));
    still_serves(&master).await;
}

#[tokio::test]
async fn silence_is_closed_after_the_hello_deadline() {
    let master = Master::ready(&["--pool-start", "1"]);
    let s = TcpStream::connect(&master.addr).unwrap();
    assert!(closed_by_master(s, Duration::from_secs(10)));
    master.wait_log("no hello within", Duration::from_secs(5));
    still_serves(&master).await;
}

#[tokio::test]
async fn wrong_child_secret_is_refused() {
    let mut master = Master::ready(&["--pool-start", "2"]);
    let before = master.children();
    let mut s = TcpStream::connect(&master.addr).unwrap();
    let hello = Hello::Handler(HandlerHello {
        version: PROTOCOL_VERSION,
        child_id: 1,
        pid: std::process::id(),
        secret: [0; 32],
        modules: vec!["echo".into()],
    });
    s.write_all(&codec::to_frame(&hello).unwrap()).unwrap();
    assert!(closed_by_master(s, Duration::from_secs(5)));
    master.wait_log("handler hello refused", Duration::from_secs(5));
    still_serves(&master).await;
    assert_eq!(master.children(), before, "real children undisturbed");
    let stats = master.client().await.stats().await.unwrap();
    assert_eq!(stats.pool.size, 2);
}

#[tokio::test]
async fn unknown_message_after_a_good_hello_is_closed() {
    let master = Master::ready(&["--pool-start", "1"]);
    let mut s = TcpStream::connect(&master.addr).unwrap();
    let hello = Hello::Client(ClientHello {
        version: PROTOCOL_VERSION,
        token: None,
    });
    s.write_all(&codec::to_frame(&hello).unwrap()).unwrap();
    // Variant 77 of ToMaster does not exist.
    s.write_all(&[0, 0, 0, 4, 77, 0, 0, 0]).unwrap();
    assert!(closed_by_master(s, Duration::from_secs(5)));
    master.wait_log("bad frame from client", Duration::from_secs(5));
    still_serves(&master).await;
}

#[tokio::test]
async fn wrong_protocol_version_is_refused_with_a_reason() {
    let master = Master::ready(&["--pool-start", "1"]);
    let mut s = TcpStream::connect(&master.addr).unwrap();
    let hello = Hello::Client(ClientHello {
        version: 999,
        token: None,
    });
    s.write_all(&codec::to_frame(&hello).unwrap()).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    let msg: taskmaster_proto::messages::ToClient =
        codec::decode(bytes::BytesMut::from(&body[..])).unwrap();
    assert!(
        matches!(msg, taskmaster_proto::messages::ToClient::Refused { .. }),
        "{msg:?}"
    );
    assert!(closed_by_master(s, Duration::from_secs(5)));
    still_serves(&master).await;
}

#[tokio::test]
async fn submit_over_the_size_limits_is_closed_and_client_checks_first() {
    let master = Master::ready(&["--pool-start", "1", "--max-payload", "4096"]);
    // The Rust client refuses before sending.
    let client = master.client().await;
    assert!(matches!(
        client.submit("echo", vec![0u8; 4097], bytes::Bytes::new()),
        Err(taskmaster_tests::ClientError::TooLarge { .. })
    ));
    assert!(matches!(
        client.submit("echo", "x", vec![0u8; codec::MAX_CONTEXT + 1]),
        Err(taskmaster_tests::ClientError::TooLarge { .. })
    ));
    // A raw peer that ignores the limits is closed, and logged.
    let mut s = TcpStream::connect(&master.addr).unwrap();
    let hello = Hello::Client(ClientHello {
        version: PROTOCOL_VERSION,
        token: None,
    });
    s.write_all(&codec::to_frame(&hello).unwrap()).unwrap();
    let submit = taskmaster_proto::messages::ToMaster::Submit {
        tag: 1,
        module: "echo".into(),
        context: vec![7u8; codec::MAX_CONTEXT + 1].into(),
        options: Default::default(),
        input: bytes::Bytes::from_static(b"x"),
    };
    s.write_all(&codec::to_frame(&submit).unwrap()).unwrap();
    assert!(closed_by_master(s, Duration::from_secs(5)));
    master.wait_log("submit over the size limits", Duration::from_secs(5));
    still_serves(&master).await;
}

/// A master whose `--max-payload` is above the default: the client takes
/// its limit from the `Welcome`, so an answer that large arrives (it used
/// to be cut off as an oversized frame).
#[tokio::test]
async fn answers_above_the_default_payload_limit_reach_the_client() {
    let limit = (taskmaster_proto::codec::DEFAULT_MAX_PAYLOAD * 2).to_string();
    let master = Master::ready(&["--pool-start", "1", "--max-payload", &limit]);
    let client = master.client().await;
    let big = vec![7u8; taskmaster_proto::codec::DEFAULT_MAX_PAYLOAD + 4096];
    let out = client.do_task("echo", big.clone()).await.expect("echo");
    assert!(out == big, "the answer came back changed");
}
