//! The workspace's shape, checked: no import circle between the files of
//! any crate (a `use crate::x` from `a` and one back from `x` to `a`), and
//! no non-test source file over 700 lines. Sources are read as text: the
//! check is about how the code is laid out, not how it runs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `a/b/mod.rs` and `a/b.rs` are module `a::b`; `lib.rs` and `main.rs`
/// the crate root.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts.join("::")
}

/// The code of a file without its comments and its `mod tests`.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Modules of the crate each module names with `crate::` or `super::`.
fn edges(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let texts: BTreeMap<String, String> = files
        .iter()
        .map(|f| {
            (
                module_of(src, f),
                code(&std::fs::read_to_string(f).unwrap()),
            )
        })
        .collect();
    let mut edges = BTreeMap::new();
    for (module, text) in &texts {
        let mut deps = BTreeSet::new();
        let parent = module.rsplit_once("::").map_or("", |(p, _)| p);
        for (prefix, base) in [("crate::", String::new()), ("super::", parent.to_owned())] {
            for (i, _) in text.match_indices(prefix) {
                let path: String = text[i + prefix.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
                // The longest prefix that is a module of this crate.
                let target = (1..=segs.len()).rev().find_map(|n| {
                    let name = segs[..n].join("::");
                    let full = if base.is_empty() {
                        name
                    } else {
                        format!("{base}::{name}")
                    };
                    texts.contains_key(&full).then_some(full)
                });
                if let Some(t) = target {
                    let related = t == *module
                        || module.starts_with(&format!("{t}::"))
                        || t.starts_with(&format!("{module}::"));
                    if !related && !t.is_empty() {
                        deps.insert(t);
                    }
                }
            }
        }
        edges.insert(module.clone(), deps);
    }
    edges
}

/// The modules on a circle, if any (depth-first search for a back edge).
fn circle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            return Some(path[i..].to_vec());
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_owned());
        for d in edges.get(m).into_iter().flatten() {
            if let Some(c) = visit(d, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|m| visit(m, edges, &mut Vec::new(), &mut done))
}

#[test]
fn no_import_circle_in_any_crate() {
    for krate in ["proto", "handler", "modules", "master", "tests"] {
        let edges = edges(&workspace().join(krate).join("src"));
        assert!(
            edges.len() > 1 || krate == "modules",
            "{krate}: no modules found"
        );
        if let Some(c) = circle(&edges) {
            panic!("{krate}: import circle {}", c.join(" -> "));
        }
    }
}

#[test]
fn the_circle_finder_finds_a_circle() {
    let mut edges = BTreeMap::new();
    edges.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    edges.insert("b".to_owned(), BTreeSet::from(["c".to_owned()]));
    edges.insert("c".to_owned(), BTreeSet::from(["a".to_owned()]));
    assert_eq!(circle(&edges).map(|c| c.len()), Some(3));
    edges.insert("c".to_owned(), BTreeSet::new());
    assert_eq!(circle(&edges), None);
}

#[test]
fn no_source_file_over_700_lines() {
    let mut files = Vec::new();
    for krate in ["proto", "handler", "modules", "master"] {
        rust_files(&workspace().join(krate).join("src"), &mut files);
    }
    let too_long: Vec<String> = files
        .iter()
        .filter(|f| {
            // Test-only files: a model test or unit tests beside the code.
            let name = f.file_name().unwrap().to_string_lossy();
            !(name == "tests.rs" || name == "model.rs")
        })
        .filter_map(|f| {
            let n = std::fs::read_to_string(f).unwrap().lines().count();
            (n > 700).then(|| format!("{} ({n} lines)", f.display()))
        })
        .collect();
    assert!(too_long.is_empty(), "over 700 lines: {too_long:?}");
}
