//! The schema holds what the model's limits allow: every constant of
//! `model::limits` against the column it stands for, read from the
//! migrations (MySQL binds; SQLite's columns are unbounded TEXT).

use std::collections::HashMap;

use crate::model::limits::*;

/// `table.column` → declared type, from every migration of a backend
/// (CREATE TABLE bodies and ALTER TABLE … ADD COLUMN).
fn declared_columns(dir: &str) -> HashMap<String, String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("migrations dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    let mut out = HashMap::new();
    for f in files {
        let sql = std::fs::read_to_string(&f).expect("migration");
        let mut table: Option<String> = None;
        for line in sql.lines() {
            let l = line.trim();
            let words: Vec<&str> = l.split_whitespace().collect();
            let unquote = |w: &str| w.trim_matches(['`', '"', '(']).to_string();
            if l.starts_with("CREATE TABLE") {
                table = words.iter().rev().find(|w| **w != "(").map(|w| unquote(w));
                continue;
            }
            if l.starts_with(')') {
                table = None;
                continue;
            }
            if l.starts_with("ALTER TABLE") && words.len() >= 7 && words[3] == "ADD" {
                out.insert(
                    format!("{}.{}", unquote(words[2]), unquote(words[5])),
                    words[6].trim_end_matches([',', ';']).to_uppercase(),
                );
                continue;
            }
            if let (Some(t), [col, ty, ..]) = (&table, words.as_slice()) {
                let col = unquote(col);
                if !matches!(
                    col.as_str(),
                    "PRIMARY" | "UNIQUE" | "KEY" | "CONSTRAINT" | "INDEX"
                ) {
                    out.insert(
                        format!("{t}.{col}"),
                        ty.trim_end_matches(',').to_uppercase(),
                    );
                }
            }
        }
    }
    out
}

fn mysql() -> HashMap<String, String> {
    declared_columns(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../migrations/mysql"
    ))
}

fn sqlite() -> HashMap<String, String> {
    declared_columns(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../migrations/sqlite"
    ))
}

/// The width in a `VARCHAR(n)` / `CHAR(n)` type.
fn width(ty: &str) -> Option<usize> {
    let inner = ty
        .strip_prefix("VARCHAR(")
        .or_else(|| ty.strip_prefix("CHAR("))?;
    inner.strip_suffix(')')?.parse().ok()
}

/// Every constant against the column(s) it stands for.
const BOUND: &[(&str, usize)] = &[
    ("events.id", EVENT_ID_LEN),
    ("events.record_type", RECORD_TYPE_MAX),
    ("events.record_id", RECORD_ID_MAX),
    ("events.source", SOURCE_MAX),
    ("events.full_snapshot_ref", SNAPSHOT_REF_MAX),
    ("event_audit_log.event_id", EVENT_ID_LEN),
    ("event_audit_log.fingerprint", FINGERPRINT_LEN),
    ("event_audit_log.record_type", RECORD_TYPE_MAX),
    ("event_audit_log.record_id", RECORD_ID_MAX),
    ("event_audit_log.stage", STAGE_MAX),
    ("event_audit_log.processing_outcome", REASON_MAX),
    ("event_audit_log.message_id", MESSAGE_ID_MAX),
    ("record_state.record_type", RECORD_TYPE_MAX),
    ("record_state.record_id", RECORD_ID_MAX),
    ("outbox.event_id", EVENT_ID_LEN),
    ("outbox.ordering_key", ORDERING_KEY_MAX),
    ("dead_letters.dlq_message_id", MESSAGE_ID_MAX),
    ("dead_letters.origin_message_id", MESSAGE_ID_MAX),
    ("dead_letters.stage", STAGE_MAX),
    ("dead_letters.reason", REASON_MAX),
    ("dead_letters.fingerprint", FINGERPRINT_LEN),
    ("dead_letters.record_type", RECORD_TYPE_MAX),
    ("dead_letters.record_id", RECORD_ID_MAX),
    ("dead_letters.ordering_key", ORDERING_KEY_MAX),
    ("dead_letters.source_subscription", SUBSCRIPTION_MAX),
];

#[test]
fn constants_match_the_mysql_column_widths() {
    let cols = mysql();
    for (col, want) in BOUND {
        let ty = cols
            .get(*col)
            .unwrap_or_else(|| panic!("{col} is not declared in migrations/mysql"));
        assert_eq!(width(ty), Some(*want), "{col} is {ty}");
    }
    assert_eq!(
        cols.get("dead_letters.last_error").map(String::as_str),
        Some("TEXT")
    );
    for col in ["data", "errors", "attributes"] {
        let ty = &cols[&format!("dead_letters.{col}")];
        assert!(ty.starts_with("LONG"), "dead_letters.{col} is {ty}");
    }
}

/// Wherever a record's type or id is stored, whatever table a later
/// migration adds, it has the same width as in `events`.
#[test]
fn every_record_key_column_has_the_event_width() {
    let cols = mysql();
    let mut seen = 0;
    for (col, ty) in &cols {
        let want = if col.ends_with(".record_type") {
            RECORD_TYPE_MAX
        } else if col.ends_with(".record_id") {
            RECORD_ID_MAX
        } else if col.ends_with(".fingerprint") {
            FINGERPRINT_LEN
        } else {
            continue;
        };
        seen += 1;
        assert_eq!(width(ty), Some(want), "{col} is {ty}");
    }
    assert!(seen >= 9, "parsed only {seen} key columns: {cols:?}");
}

/// SQLite declares these columns TEXT (no width): MySQL is the binding
/// backend, so one set of constants covers both.
#[test]
fn sqlite_columns_are_unbounded_text() {
    let cols = sqlite();
    for (col, _) in BOUND {
        let ty = cols
            .get(*col)
            .unwrap_or_else(|| panic!("{col} is not declared in migrations/sqlite"));
        assert_eq!(ty, "TEXT", "{col}");
    }
    assert_eq!(cols["events.changes"], "TEXT");
}
