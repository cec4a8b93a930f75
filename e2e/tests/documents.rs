//! The repository explains itself: every reference to a document (`something.md`, optionally
//! with a `#section`) in code, comments, scripts and the READMEs names a file inside the
//! repository, and its section exists. A reference to a document that only lived elsewhere fails
//! here.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// The files git tracks (what a clone holds), text only.
fn tracked() -> Vec<PathBuf> {
    let out = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(repo())
        .output()
        .expect("git ls-files");
    assert!(out.status.success(), "git ls-files failed");
    out.stdout
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| repo().join(String::from_utf8_lossy(p).as_ref()))
        .filter(|p| !matches!(p.extension().and_then(|e| e.to_str()), Some("lock" | "sum")))
        .collect()
}

/// `(name.md, Some(section))` for every document reference in `text`.
fn references(text: &str) -> Vec<(String, Option<String>)> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(offset) = text[at..].find(".md") {
        let end = at + offset + 3;
        let start = text[..at + offset]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || "_./-".contains(c)))
            .map_or(0, |i| {
                i + text[i..].chars().next().map_or(1, char::len_utf8)
            });
        let name = &text[start..end];
        let next = bytes.get(end).copied();
        // `foo.md` but not `foo.mdx` or a longer word.
        if !name.starts_with(".md")
            && start < at + offset
            && !next.is_some_and(|b| b.is_ascii_alphanumeric())
        {
            let section = (next == Some(b'#')).then(|| {
                text[end + 1..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                    .collect::<String>()
            });
            found.push((name.to_owned(), section.filter(|s| !s.is_empty())));
        }
        at = end;
    }
    found
}

/// GitHub's anchor of a Markdown heading: lower case, spaces to `-`, punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_document_reference_resolves_inside_the_repository() {
    let files = tracked();
    assert!(files.len() > 50, "only {} tracked files", files.len());
    let mut broken = Vec::new();
    let mut checked = 0;
    // This file's own examples are data, not references.
    for file in files
        .iter()
        .filter(|f| !f.ends_with("e2e/tests/documents.rs"))
    {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue; // not text
        };
        for (name, section) in references(&text) {
            checked += 1;
            // Relative to the file's directory, or to the repository's root.
            let target = [file.parent().unwrap().join(&name), repo().join(&name)]
                .into_iter()
                .find(|p| p.is_file());
            let shown = file.strip_prefix(repo()).unwrap().display().to_string();
            let Some(target) = target else {
                broken.push(format!("{shown}: {name} is not in the repository"));
                continue;
            };
            if let Some(section) = section {
                let document = std::fs::read_to_string(&target).unwrap();
                let anchors: Vec<String> = document
                    .lines()
                    .filter_map(|l| l.strip_prefix('#'))
                    .map(|l| anchor(l.trim_start_matches('#')))
                    .collect();
                if !anchors.contains(&section) {
                    broken.push(format!("{shown}: {name}#{section}: no such section"));
                }
            }
        }
    }
    assert!(checked >= 10, "only {checked} references found");
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn references_are_found_as_written() {
    assert_eq!(
        references("see ARCHITECTURE.md, [x](docs/a-b.md#the-relay) and README.md."),
        [
            ("ARCHITECTURE.md".to_owned(), None),
            ("docs/a-b.md".to_owned(), Some("the-relay".to_owned())),
            ("README.md".to_owned(), None),
        ]
    );
    assert_eq!(references("a .md file, foo.mdx"), []);
    assert_eq!(
        anchor(" Relay: no dual-write loss, for any number of replicas"),
        "relay-no-dual-write-loss-for-any-number-of-replicas"
    );
}
