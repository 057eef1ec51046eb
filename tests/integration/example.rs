//! The custom handler of `docs/writing-modules.md`: the doc's code is the
//! example file verbatim, and the built example answers through a master.

use std::path::Path;
use taskmaster_tests::{bin, Master};

#[test]
fn the_doc_shows_the_example_file_verbatim() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let doc = std::fs::read_to_string(root.join("docs/writing-modules.md")).unwrap();
    let file = std::fs::read_to_string(root.join("modules/examples/custom_handler.rs")).unwrap();
    let start = doc
        .find("```rust\n//! A custom taskmaster handler")
        .expect("the doc holds the example")
        + "```rust\n".len();
    let len = doc[start..].find("```").unwrap();
    assert_eq!(
        &doc[start..start + len],
        file,
        "docs/writing-modules.md and the example differ"
    );
}

#[tokio::test]
async fn the_example_handler_builds_and_answers() {
    let master = Master::start_with(&["--pool-start", "1"], &bin("custom_handler"));
    master.wait_log("pool ready", std::time::Duration::from_secs(10));
    let client = master.client().await;
    let out = client.do_task("wordcount", "one two\nthree").await.unwrap();
    assert_eq!(out, "3".as_bytes());
    let greetings: Vec<String> = client
        .do_typed("greet", &vec!["Ada".to_string(), "Linus".to_string()])
        .await
        .unwrap();
    assert_eq!(greetings, vec!["Hello, Ada!", "Hello, Linus!"]);
    // The standard modules come along.
    assert_eq!(
        client.do_task("echo", "std").await.unwrap(),
        "std".as_bytes()
    );
}
