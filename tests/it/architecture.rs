//! The shape of docs/architecture.md, checked against the source of the
//! workspace's three crates: a module imports only from its own layer or
//! lower ones, top-level modules form no import cycle and neither do the files
//! of one module, SQL lives only in the library's `store/` and the bench's
//! `sql/`, counted events go through `internal_events/`, and no file is over
//! 600 lines before its tests nor any function over 100 lines. It reads the
//! sources as text (no parser crate): `crate::`/`backbone::` paths, string
//! literals, `fn` items and their braces are simple enough to find.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

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
    ("bench", 6),
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

/// Where SQL may be written: the library's store and the bench's own.
const SQL_HOMES: &[&[&str]] = &[&["store"], &["bench", "sql"]];

/// A screen or two: longer files and functions are split along a seam.
const MAX_FILE_LINES: usize = 600;
const MAX_FN_LINES: usize = 100;

/// The workspace's crates: (folder, module prefix). Modules of
/// the three share one namespace here: the library's at the top, the
/// daemon binary's (cli, commands, demo) beside them, the bench's under
/// `bench`.
const CRATES: &[(&str, &[&str])] = &[
    ("crates/backbone", &[]),
    (".", &[]),
    ("crates/bench", &["bench"]),
];

/// Statements that may appear only under crates/backbone/src/store/.
const SQL_VERBS: &[&str] = &[
    "SELECT", "INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER", "GRANT",
    "REVOKE", "SHOW", "TRUNCATE",
];

struct Source {
    /// Path from the workspace root, e.g. "crates/backbone/src/runtime/consumer/lanes.rs".
    rel: String,
    /// Module path, e.g. ["runtime", "consumer", "lanes"] (the bench's under "bench").
    module: Vec<String>,
    /// The crate's own module prefix (`crate::x` is `prefix + x`).
    prefix: Vec<String>,
    /// The file as written.
    text: String,
    /// The text with comments removed.
    code: String,
}

impl Source {
    /// Every module path the file names (`crate::…` and `backbone::…`), in
    /// the shared namespace, as its first two segments below the prefix.
    fn imports(&self) -> BTreeSet<Vec<String>> {
        let mut out = BTreeSet::new();
        for p in crate_paths(&self.code, "crate::") {
            let mut full = self.prefix.clone();
            full.extend(p);
            full.truncate(self.prefix.len().max(1) + 1);
            out.insert(full);
        }
        out.extend(crate_paths(&self.code, "backbone::"));
        out
    }

    fn is_root(&self) -> bool {
        self.module.len() == self.prefix.len()
    }
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sources() -> Vec<Source> {
    let mut out = Vec::new();
    for (dir, prefix) in CRATES {
        let root = workspace().join(dir).join("src");
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("read src dir") {
                let path = entry.expect("dir entry").path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let under = path
                        .strip_prefix(&root)
                        .expect("under src")
                        .to_string_lossy()
                        .replace('\\', "/");
                    let mut module: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
                    if under != "lib.rs" && under != "main.rs" {
                        module.extend(under.trim_end_matches(".rs").split('/').map(str::to_string));
                    }
                    if module.last().is_some_and(|m| m == "mod") {
                        module.pop();
                    }
                    let text = std::fs::read_to_string(&path).expect("read source");
                    let rel = path
                        .strip_prefix(workspace())
                        .expect("under the workspace")
                        .to_string_lossy()
                        .replace('\\', "/");
                    out.push(Source {
                        rel,
                        module,
                        prefix: prefix.iter().map(|s| s.to_string()).collect(),
                        code: strip_comments(&text),
                        text,
                    });
                }
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

/// Every `crate::a::b…` path (or `backbone::…`, as `root` says) in the
/// code, as its first two segments, with `crate::{a::x, b}` groups expanded.
fn crate_paths(code: &str, root: &str) -> BTreeSet<Vec<String>> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find(root) {
        let preceded_by_ident = rest[..at]
            .chars()
            .last()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$');
        let tail = &rest[at + root.len()..];
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
    for s in sources().iter().filter(|s| !s.is_root()) {
        let Some((from_name, from)) = layer_of(&s.module) else {
            unknown.insert(s.rel.clone());
            continue;
        };
        for path in s.imports() {
            let Some((to_name, to)) = layer_of(&path) else {
                unknown.insert(format!("{} (imported by {})", path.join("::"), s.rel));
                continue;
            };
            if to > from {
                violations.push(format!(
                    "{}: {from_name} ({}) imports {} ({})",
                    s.rel,
                    LAYER_NAMES[from],
                    path.join("::"),
                    LAYER_NAMES[to],
                ));
            }
            if let Some((_, allowed)) = ONLY.iter().find(|(m, _)| *m == from_name) {
                if to_name != from_name && !allowed.contains(&to_name) {
                    violations.push(format!(
                        "{}: {from_name} may import only {allowed:?}, imports {}",
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
    for s in sources().iter().filter(|s| !s.is_root()) {
        let from = s.module[0].clone();
        for path in s.imports() {
            if path[0] != from {
                graph
                    .entry(from.clone())
                    .or_default()
                    .insert(path[0].clone());
            }
        }
    }
    let cycles = find_cycles(&graph);
    assert!(cycles.is_empty(), "import cycles: {cycles:#?}");
}

/// SQL verbs at the start of a string literal (after whitespace), or `sqlx::`
/// in code, outside the library's store/ and the bench's sql/.
#[test]
fn sql_lives_only_in_the_store() {
    let mut found = Vec::new();
    let home = |s: &Source| {
        SQL_HOMES
            .iter()
            .any(|h| h.len() <= s.module.len() && h.iter().zip(&s.module).all(|(a, b)| a == b))
    };
    for s in sources().iter().filter(|s| !home(s)) {
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
        "SQL outside crates/backbone/src/store/ and crates/bench/src/sql/:\n{}",
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
/// only by `crates/backbone/src/metrics.rs` and the events of `crates/backbone/src/internal_events/`.
#[test]
fn metrics_are_written_only_through_internal_events() {
    let mut found = Vec::new();
    for s in sources().iter().filter(|s| !s.is_root()) {
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
        "metrics written outside crates/backbone/src/internal_events/:\n{}",
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
    let paths: Vec<String> = crate_paths(&code, "crate::")
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

/// The lines before the file's tests (`#[cfg(test)]` at the start of a line).
fn lines_before_tests(text: &str) -> usize {
    text.lines()
        .position(|l| l.starts_with("#[cfg(test)]"))
        .unwrap_or_else(|| text.lines().count())
}

#[test]
fn no_file_is_over_600_lines_before_its_tests() {
    let long: Vec<String> = sources()
        .iter()
        .map(|s| (lines_before_tests(&s.text), &s.rel))
        .filter(|(n, _)| *n > MAX_FILE_LINES)
        .map(|(n, rel)| format!("{rel}: {n} lines"))
        .collect();
    assert!(
        long.is_empty(),
        "files over {MAX_FILE_LINES} lines before their tests (split along a seam):\n{}",
        long.join("\n")
    );
}

/// `code` with comments and the contents of string and char literals
/// blanked (newlines kept), so braces inside them are not counted. One pass:
/// a `//` inside a raw string is not a comment, a `"` in a comment no string.
fn blank_literals(code: &str) -> String {
    let chars: Vec<char> = code.chars().collect();
    let mut out = String::with_capacity(code.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
            continue;
        }
        if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
            continue;
        }
        // r"…", r#"…"#, br"…" (not an identifier ending in r or b).
        let starts_raw =
            (c == 'r' || (c == 'b' && next == Some('r'))) && (i == 0 || !ident(chars[i - 1]));
        if starts_raw {
            let mut j = if c == 'b' { i + 2 } else { i + 1 };
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) == Some(&'"') {
                let close: Vec<char> = std::iter::once('"')
                    .chain(std::iter::repeat_n('#', hashes))
                    .collect();
                out.extend(&chars[i..=j]);
                let mut k = j + 1;
                while k < chars.len() && !chars[k..].starts_with(&close) {
                    out.push(blank(chars[k]));
                    k += 1;
                }
                out.extend(chars[k..(k + close.len()).min(chars.len())].iter());
                i = k + close.len();
                continue;
            }
        }
        if c == '"' {
            out.push('"');
            let mut k = i + 1;
            while k < chars.len() && chars[k] != '"' {
                if chars[k] == '\\' {
                    out.push(' ');
                    k += 1;
                }
                if k < chars.len() {
                    out.push(blank(chars[k]));
                }
                k += 1;
            }
            out.push('"');
            i = k + 1;
            continue;
        }
        if c == '\'' {
            // A char literal ('x', '\n', '\u{..}'), not a lifetime ('a).
            if next == Some('\\') {
                let mut k = i + 2;
                while k < chars.len() && chars[k] != '\'' {
                    k += 1;
                }
                out.push_str(&" ".repeat(k + 1 - i));
                i = k + 1;
                continue;
            }
            if chars.get(i + 2) == Some(&'\'') {
                out.push_str("   ");
                i += 3;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

/// Every `fn` with a body, as (name, first line, lines from its signature to
/// its closing brace), in code whose literals are blanked.
fn functions(code: &str) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let line_of = |at: usize| code[..at].matches('\n').count() + 1;
    let mut search = 0;
    while let Some(found) = code[search..].find("fn ") {
        let at = search + found;
        search = at + 3;
        if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
            continue;
        }
        let name: String = code[at + 3..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() {
            continue;
        }
        // The body's opening brace, or `;` for a declaration without one.
        let mut depth = 0i32;
        let mut open = None;
        for (k, &b) in bytes.iter().enumerate().skip(at) {
            match b {
                b'(' | b'[' | b'<' => depth += 1,
                b')' | b']' => depth -= 1,
                b'>' if k > 0 && bytes[k - 1] != b'-' && bytes[k - 1] != b'=' => depth -= 1,
                b';' if depth <= 0 => break,
                b'{' if depth <= 0 => {
                    open = Some(k);
                    break;
                }
                _ => {}
            }
        }
        let Some(open) = open else { continue };
        let mut braces = 0i32;
        let mut close = None;
        for (k, &b) in bytes.iter().enumerate().skip(open) {
            match b {
                b'{' => braces += 1,
                b'}' => {
                    braces -= 1;
                    if braces == 0 {
                        close = Some(k);
                        break;
                    }
                }
                _ => {}
            }
        }
        let Some(close) = close else { continue };
        let first = line_of(at);
        out.push((name, first, line_of(close) - first + 1));
    }
    out
}

#[test]
fn no_function_is_over_100_lines_outside_tests() {
    let mut long = Vec::new();
    for s in sources() {
        let before: String = s
            .text
            .lines()
            .take(lines_before_tests(&s.text))
            .collect::<Vec<_>>()
            .join("\n");
        let code = blank_literals(&before);
        for (name, line, n) in functions(&code) {
            if n > MAX_FN_LINES {
                long.push(format!("{}:{line}: fn {name}: {n} lines", s.rel));
            }
        }
    }
    assert!(
        long.is_empty(),
        "functions over {MAX_FN_LINES} lines (split into steps):\n{}",
        long.join("\n")
    );
}

/// The files of one module (siblings in a folder, mod.rs aside) import each
/// other one way: `super::x` or `crate::…::x` naming a sibling is an edge.
#[test]
fn the_files_of_one_module_form_no_import_cycle() {
    let all = sources();
    let mut by_parent: BTreeMap<Vec<String>, Vec<&Source>> = BTreeMap::new();
    for s in all
        .iter()
        .filter(|s| !s.is_root() && !s.rel.ends_with("/mod.rs"))
    {
        let parent = s.module[..s.module.len() - 1].to_vec();
        by_parent.entry(parent).or_default().push(s);
    }
    let mut cycles = Vec::new();
    for (parent, files) in &by_parent {
        let names: BTreeSet<&str> = files
            .iter()
            .filter_map(|s| s.module.last())
            .map(String::as_str)
            .collect();
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for s in files {
            let me = s.module.last().cloned().unwrap_or_default();
            let mut named = sibling_paths(&s.code, "super::");
            let own = s.prefix.len();
            let full = parent[own..].join("::");
            if !full.is_empty() {
                named.extend(sibling_paths(&s.code, &format!("crate::{full}::")));
                if own == 0 {
                    named.extend(sibling_paths(&s.code, &format!("backbone::{full}::")));
                }
            }
            for n in named {
                if n != me && names.contains(n.as_str()) {
                    graph.entry(me.clone()).or_default().insert(n);
                }
            }
        }
        for cycle in find_cycles(&graph) {
            cycles.push(format!("{}: {cycle}", parent.join("::")));
        }
    }
    assert!(
        cycles.is_empty(),
        "import cycles between the files of one module: {cycles:#?}"
    );
}

/// The first segment after `root` wherever it appears (groups expanded).
fn sibling_paths(code: &str, root: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find(root) {
        let preceded = rest[..at]
            .chars()
            .last()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
        let tail = &rest[at + root.len()..];
        rest = tail;
        if preceded {
            continue;
        }
        if let Some(group) = tail.strip_prefix('{') {
            for item in top_level_items(group) {
                if let Some(first) = segments(&item).into_iter().next() {
                    out.insert(first);
                }
            }
        } else if let Some(first) = segments(tail).into_iter().next() {
            out.insert(first);
        }
    }
    out
}

/// Every cycle in `graph`, each as "a -> b -> a": a depth-first search in
/// which a back edge closes one.
fn find_cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
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
            visit(node, graph, &mut state, &mut Vec::new(), &mut cycles);
        }
    }
    cycles
}

#[test]
fn the_size_checkers_count_what_they_should() {
    let code = blank_literals(
        "fn a() {\n    let s = \"}{\"; // }\n    let c = '{';\n    let r = r#\"}//\"#;\n}\n\
         trait T { fn b(&self) -> Vec<u8>; }\n\
         fn c<'a>(x: &'a str) -> impl Fn() -> u8 where u8: Copy {\n    || 1\n}\n",
    );
    let found = functions(&code);
    assert_eq!(
        found,
        [("a".to_string(), 1, 5), ("c".to_string(), 7, 3)],
        "{code}"
    );
    assert_eq!(lines_before_tests("a\nb\n#[cfg(test)]\nmod tests {}\n"), 2);
    let g: BTreeMap<String, BTreeSet<String>> = [
        (
            "executor".to_string(),
            BTreeSet::from(["lanes".to_string()]),
        ),
        ("lanes".to_string(), BTreeSet::from(["message".to_string()])),
        (
            "message".to_string(),
            BTreeSet::from(["executor".to_string()]),
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        find_cycles(&g),
        ["executor -> lanes -> message -> executor"]
    );
    assert_eq!(
        sibling_paths("use super::{lanes::Lane, hold};\nx::super::no;", "super::"),
        BTreeSet::from(["hold".to_string(), "lanes".to_string()])
    );
}
