//! The repository explains itself: nothing in it points outside it (the
//! specification once kept beside it, a folder up), and every "docs/spec.md §N" reference
//! names a section docs/spec.md has (`## N.` or `### N.M` headings).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every text file of the repository (build output, VCS data and run data aside).
fn text_files() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !matches!(name.as_str(), "target" | ".git" | "data" | "node_modules") {
                    walk(&path, out);
                }
            } else if let Ok(text) = std::fs::read_to_string(&path) {
                out.push((path, text));
            }
        }
    }
    let mut out = Vec::new();
    walk(&root(), &mut out);
    assert!(out.len() > 50, "found only {} files", out.len());
    out
}

/// Section numbers docs/spec.md has: `## 4. Stages` → 4, `### 4.1 …` → 4.1.
fn spec_sections() -> BTreeSet<String> {
    let spec = std::fs::read_to_string(root().join("docs/spec.md")).expect("docs/spec.md");
    spec.lines()
        .filter_map(|line| {
            let rest = line
                .strip_prefix("### ")
                .or_else(|| line.strip_prefix("## "))?;
            let number: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let number = number.trim_end_matches('.');
            (!number.is_empty()).then(|| number.to_owned())
        })
        .collect()
}

/// The section numbers a text cites as "docs/spec.md §N", including the
/// ones listed after it ("docs/spec.md §4.2, §4.3 and §6").
fn cited_sections(text: &str) -> Vec<String> {
    const ANCHOR: &str = "docs/spec.md §";
    let mut out = Vec::new();
    for (at, _) in text.match_indices(ANCHOR) {
        let mut rest = &text[at + ANCHOR.len()..];
        loop {
            let number: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let number = number.trim_end_matches('.').to_owned();
            if number.is_empty() {
                break;
            }
            rest = &rest[number.len()..];
            out.push(number);
            // A list goes on: ", §4.3", " and §6", "/§7".
            let next = rest.trim_start_matches([',', ' ', '/', '–', '-']);
            let next = next.strip_prefix("and ").unwrap_or(next);
            let next = next.strip_prefix("or ").unwrap_or(next);
            match next.strip_prefix('§') {
                Some(r) => rest = r,
                None => break,
            }
        }
    }
    out
}

#[test]
fn docs_refs_nothing_points_outside_the_repository() {
    // Spelt in two pieces so this file does not match itself.
    let outside = concat!("..", "/shared");
    let offenders: Vec<String> = text_files()
        .into_iter()
        .filter(|(_, text)| text.contains(outside))
        .map(|(path, _)| path.display().to_string())
        .collect();
    assert!(
        offenders.is_empty(),
        "these refer to {outside}: {offenders:#?}"
    );
}

#[test]
fn docs_refs_every_spec_reference_names_an_existing_section() {
    let sections = spec_sections();
    assert!(
        sections.contains("4") && sections.contains("4.1") && sections.contains("11"),
        "headings not read: {sections:?}"
    );
    let mut cited = 0;
    let mut missing = Vec::new();
    for (path, text) in text_files() {
        for number in cited_sections(&text) {
            cited += 1;
            if !sections.contains(&number) {
                missing.push(format!("{}: §{number}", path.display()));
            }
        }
    }
    assert!(
        cited > 100,
        "only {cited} references found: is the parser right?"
    );
    assert!(
        missing.is_empty(),
        "references to sections docs/spec.md does not have (it has {sections:?}): {missing:#?}"
    );
}

#[test]
fn docs_refs_lists_are_read_in_full() {
    assert_eq!(
        cited_sections("see docs/spec.md §4.2, §4.3 and §6. Also docs/spec.md §9: x §12"),
        ["4.2", "4.3", "6", "9"]
    );
}
