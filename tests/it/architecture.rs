//! The layering of docs/architecture.md, checked against the source: a module
//! imports only from its own layer or lower ones, top-level modules form no
//! import cycle, SQL lives only under `src/store/`, and counted events go
//! through `src/internal_events/`. It reads `src/` as text (no parser crate):
//! `crate::` paths, string literals and calls are simple enough to find.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Lowest first. A module path matches its longest prefix in this table.
const LAYERS: &[(&str, usize)] = &[
    ("model", 0),
    ("topology", 0),
    ("metrics", 1),
    ("internal_events", 1),
    ("store", 2),
    ("snapshots", 2),
    ("pubsub", 2),
    ("stages", 3),
    ("dlq", 3),
    ("history", 3),
    ("explain", 3),
    ("runtime", 4),
    ("ops", 4),
    ("config", 5),
    ("app", 5),
    ("http", 5),
    ("admin", 5),
    ("console", 5),
    ("admin_ops", 5),
    ("telemetry", 5),
    ("commands", 6),
    ("demo", 6),
    ("mcp", 5),
    ("cli", 6),
];

const LAYER_NAMES: &[&str] = &[
    "domain",
    "observability",
    "adapters",
    "stages and services",
    "runtime",
    "app",
    "entry points",
];

/// Modules held to a narrower set than their layer allows.
const ONLY: &[(&str, &[&str])] = &[("config", &["model", "topology"])];

/// Statements that may appear only under src/store/.
const SQL_VERBS: &[&str] = &[
    "SELECT", "INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER", "GRANT",
    "REVOKE", "SHOW", "TRUNCATE",
];

struct Source {
    /// Path under src/, e.g. "runtime/consumer/lanes.rs".
    rel: String,
    /// Module path, e.g. ["runtime", "consumer", "lanes"].
    module: Vec<String>,
    /// The text with comments removed.
    code: String,
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn sources() -> Vec<Source> {
    let root = src_dir();
    let mut out = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path
                    .strip_prefix(&root)
                    .expect("under src")
                    .to_string_lossy()
                    .replace('\\', "/");
                if rel == "lib.rs" || rel == "main.rs" {
                    continue;
                }
                let mut module: Vec<String> = rel
                    .trim_end_matches(".rs")
                    .split('/')
                    .map(str::to_string)
                    .collect();
                if module.last().is_some_and(|m| m == "mod") {
                    module.pop();
                }
                let text = std::fs::read_to_string(&path).expect("read source");
                out.push(Source {
                    rel,
                    module,
                    code: strip_comments(&text),
                });
            }
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    out
}

/// Drops `//` comments (incl. doc comments, whose intra-doc links are not
/// imports) outside string literals. Block comments are not used in src/.
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut in_str = false;
        let mut escaped = false;
        let mut cut = line.len();
        let bytes = line.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            if in_str {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_str = false;
                }
            } else if b == b'"' {
                // A char literal '"' is not the start of a string.
                let quoted_char =
                    i > 0 && bytes[i - 1] == b'\'' && bytes.get(i + 1) == Some(&b'\'');
                if !quoted_char {
                    in_str = true;
                }
            } else if b == b'/' && bytes.get(i + 1) == Some(&b'/') {
                cut = i;
                break;
            }
        }
        out.push_str(&line[..cut]);
        out.push('\n');
    }
    out
}

/// Every `crate::a::b…` path in the code, as its first two segments, with
/// `crate::{a::x, b}` groups expanded.
fn crate_paths(code: &str) -> BTreeSet<Vec<String>> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let preceded_by_ident = rest[..at]
            .chars()
            .last()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$');
        let tail = &rest[at + "crate::".len()..];
        rest = tail;
        if preceded_by_ident {
            continue;
        }
        if let Some(group) = tail.strip_prefix('{') {
            for item in top_level_items(group) {
                out.insert(segments(&item));
            }
        } else {
            out.insert(segments(tail));
        }
    }
    out.retain(|p| !p.is_empty());
    out
}

/// The comma-separated items of a `{…}` group up to its closing brace,
/// with nested groups kept inside their item.
fn top_level_items(group: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut depth = 0usize;
    let mut current = String::new();
    for c in group.chars() {
        match c {
            '{' => {
                depth += 1;
                current.push(c);
            }
            '}' if depth == 0 => break,
            '}' => {
                depth -= 1;
                current.push(c);
            }
            ',' if depth == 0 => items.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    items.push(current);
    items
        .into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn segments(path: &str) -> Vec<String> {
    path.split("::")
        .map(|s| {
            s.chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .take_while(|s| !s.is_empty())
        .take(2)
        .collect()
}

fn layer_of(module: &[String]) -> Option<(&'static str, usize)> {
    LAYERS
        .iter()
        .filter(|(prefix, _)| {
            let p: Vec<&str> = prefix.split("::").collect();
            p.len() <= module.len() && p.iter().zip(module).all(|(a, b)| a == b)
        })
        .max_by_key(|(prefix, _)| prefix.split("::").count())
        .map(|(p, l)| (*p, *l))
}

#[test]
fn every_module_imports_only_its_own_layer_or_lower_ones() {
    let mut violations = Vec::new();
    let mut unknown = BTreeSet::new();
    for s in sources() {
        let Some((from_name, from)) = layer_of(&s.module) else {
            unknown.insert(s.rel.clone());
            continue;
        };
        for path in crate_paths(&s.code) {
            let Some((to_name, to)) = layer_of(&path) else {
                unknown.insert(format!("{} (imported by {})", path.join("::"), s.rel));
                continue;
            };
            if to > from {
                violations.push(format!(
                    "{}: {from_name} ({}) imports crate::{} ({})",
                    s.rel,
                    LAYER_NAMES[from],
                    path.join("::"),
                    LAYER_NAMES[to],
                ));
            }
            if let Some((_, allowed)) = ONLY.iter().find(|(m, _)| *m == from_name) {
                if to_name != from_name && !allowed.contains(&to_name) {
                    violations.push(format!(
                        "{}: {from_name} may import only {allowed:?}, imports crate::{}",
                        s.rel,
                        path.join("::"),
                    ));
                }
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "modules missing from the layer table (tests/it/architecture.rs and docs/architecture.md): {unknown:#?}"
    );
    assert!(
        violations.is_empty(),
        "imports pointing up a layer:\n{}",
        violations.join("\n")
    );
}

#[test]
fn top_level_modules_form_no_import_cycle() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in sources() {
        let from = s.module[0].clone();
        for path in crate_paths(&s.code) {
            if path[0] != from {
                graph
                    .entry(from.clone())
                    .or_default()
                    .insert(path[0].clone());
            }
        }
    }
    // Depth-first search; a back edge closes a cycle.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
        cycles: &mut Vec<String>,
    ) {
        state.insert(node.to_string(), 1);
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next.as_str()).copied().unwrap_or(0) {
                0 => visit(next, graph, state, path, cycles),
                1 => {
                    let start = path.iter().position(|n| n == next).unwrap_or(0);
                    let mut cycle = path[start..].to_vec();
                    cycle.push(next.clone());
                    cycles.push(cycle.join(" -> "));
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(node.to_string(), 2);
    }
    let mut state = BTreeMap::new();
    let mut cycles = Vec::new();
    for node in graph.keys() {
        if state.get(node.as_str()).copied().unwrap_or(0) == 0 {
            visit(node, &graph, &mut state, &mut Vec::new(), &mut cycles);
        }
    }
    assert!(cycles.is_empty(), "import cycles: {cycles:#?}");
}

/// SQL verbs at the start of a string literal (after whitespace), or `sqlx::`
/// in code, outside src/store/.
#[test]
fn sql_lives_only_in_the_store() {
    let mut found = Vec::new();
    for s in sources().iter().filter(|s| s.module[0] != "store") {
        for (n, line) in s.code.lines().enumerate() {
            if line.contains("sqlx::") {
                found.push(format!("{}:{}: {}", s.rel, n + 1, line.trim()));
            }
        }
        for literal in string_starts(&s.code) {
            let word: String = literal
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphabetic())
                .collect();
            if SQL_VERBS.contains(&word.as_str()) {
                found.push(format!("{}: \"{}…\"", s.rel, literal.trim_start()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "SQL outside src/store/:\n{}",
        found.join("\n")
    );
}

/// The first 40 characters of every string literal.
fn string_starts(code: &str) -> Vec<String> {
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'"' && !(i > 0 && bytes[i - 1] == b'\'') {
            let start = i + 1;
            let mut j = start;
            while j < bytes.len() && bytes[j] != b'"' {
                j += if bytes[j] == b'\\' { 2 } else { 1 };
            }
            let end = j.min(bytes.len());
            let text = String::from_utf8_lossy(&bytes[start..end]).replace("\\n", " ");
            out.push(text.chars().take(40).collect());
            i = end + 1;
        } else {
            i += 1;
        }
    }
    out
}

/// One place declares each counted event: the metrics registry is written
/// only by `src/metrics.rs` and the events of `src/internal_events/`.
#[test]
fn metrics_are_written_only_through_internal_events() {
    let mut found = Vec::new();
    for s in sources() {
        if s.module[0] == "metrics" || s.module[0] == "internal_events" {
            continue;
        }
        for (n, line) in s.code.lines().enumerate() {
            if line.contains("metrics()") {
                found.push(format!("{}:{}: {}", s.rel, n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "metrics written outside src/internal_events/:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_checker_finds_what_it_looks_for() {
    let code = strip_comments(
        "use crate::{model::rules, store::{Store, StoreError}};\n\
         // crate::commands in a comment\n\
         let q = \"  SELECT 1\"; // \"DROP in a comment\"\n\
         x.map(crate::runtime::health::Health::new);\n",
    );
    let paths: Vec<String> = crate_paths(&code)
        .into_iter()
        .map(|p| p.join("::"))
        .collect();
    assert_eq!(paths, ["model::rules", "runtime::health", "store"]);
    let starts = string_starts(&code);
    assert_eq!(starts, ["  SELECT 1"]);
    assert_eq!(
        layer_of(&["pubsub".into(), "x".into()]),
        Some(("pubsub", 2))
    );
    assert_eq!(layer_of(&["nowhere".into()]), None);
}
