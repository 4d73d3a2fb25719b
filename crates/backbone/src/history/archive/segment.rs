//! A segment's bytes: gzip'd JSON lines, a header first (the records it
//! covers and their row counts), then each record's events, audit rows,
//! merged events and checkpoint, and the replayed dead letters it holds.
//! Pure: no database, no bucket, so both are checked here alone.

use std::collections::HashMap;
use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use super::FORMAT;
use crate::store::archive::{
    AuditArchived, Checkpoint, Coverage, DeadLetterArchived, MergedArchived, RecordRows,
};
use crate::store::ledger::{RecordKey, StoredEvent};

/// One line of a segment.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", content = "r", rename_all = "snake_case")]
enum Line {
    Header {
        format: String,
        cutoff: String,
        records: Vec<Coverage>,
        #[serde(default)]
        dead_letters: usize,
    },
    Event(StoredEvent),
    Audit(AuditArchived),
    Merged {
        record_type: String,
        record_id: String,
        #[serde(flatten)]
        row: MergedArchived,
    },
    Checkpoint(Checkpoint),
    DeadLetter(Box<DeadLetterArchived>),
}

/// One record's share of a segment being built.
pub(super) struct Part {
    pub coverage: Coverage,
    pub rows: RecordRows,
    pub checkpoint: Checkpoint,
}

/// Why a segment could not be built; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("cannot write a segment line as JSON: {0}")]
    Line(serde_json::Error),
    #[error("cannot gzip a segment: {0}")]
    Gzip(std::io::Error),
}

/// Why bytes are not a segment (the reason an archive segment did not verify).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not gzip'd UTF-8: {0}")]
    NotGzip(std::io::Error),
    #[error("empty segment")]
    Empty,
    #[error("header: {0}")]
    Header(serde_json::Error),
    #[error("the first line is not a header")]
    NoHeader,
    #[error("unknown format {0:?}")]
    Format(String),
    /// `line` counts from 1, the header being line 1.
    #[error("line {line}: {error}")]
    Line {
        line: usize,
        error: serde_json::Error,
    },
    #[error("line {line}: a second header")]
    SecondHeader { line: usize },
    #[error("row of {0:?}, a record the header does not list")]
    Unlisted(RecordKey),
    #[error("{found} dead letters, the header says {header}")]
    DeadLetters { found: usize, header: usize },
    /// Rows as (events, audit, merged).
    #[error("{record_type}/{record_id}: {found:?} rows, the header says {header:?}")]
    Rows {
        record_type: String,
        record_id: String,
        found: (i64, i64, i64),
        header: (i64, i64, i64),
    },
}

/// Gzip'd JSON lines of a segment: header, rows, checkpoints; and the
/// length of the JSON lines before gzip.
pub(super) fn encode(
    cutoff: &str,
    parts: &[Part],
    dead: &[DeadLetterArchived],
) -> Result<(Vec<u8>, usize), EncodeError> {
    let mut text = Vec::new();
    let mut line = |l: &Line| -> Result<(), EncodeError> {
        serde_json::to_writer(&mut text, l).map_err(EncodeError::Line)?;
        text.push(b'\n');
        Ok(())
    };
    line(&Line::Header {
        format: FORMAT.into(),
        cutoff: cutoff.into(),
        records: parts.iter().map(|p| p.coverage.clone()).collect(),
        dead_letters: dead.len(),
    })?;
    for d in dead {
        line(&Line::DeadLetter(Box::new(d.clone())))?;
    }
    for p in parts {
        for e in &p.rows.events {
            line(&Line::Event(e.clone()))?;
        }
        for a in &p.rows.audit {
            line(&Line::Audit(a.clone()))?;
        }
        for m in &p.rows.merged {
            line(&Line::Merged {
                record_type: p.coverage.record_type.clone(),
                record_id: p.coverage.record_id.clone(),
                row: m.clone(),
            })?;
        }
        line(&Line::Checkpoint(p.checkpoint.clone()))?;
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&text).map_err(EncodeError::Gzip)?;
    let bytes = gz.finish().map_err(EncodeError::Gzip)?;
    Ok((bytes, text.len()))
}

/// A segment read back: its records' rows and checkpoints.
pub struct Decoded {
    pub cutoff: String,
    pub records: Vec<Coverage>,
    pub rows: Vec<(RecordKey, RecordRows)>,
    pub checkpoints: Vec<Checkpoint>,
    pub dead_letters: Vec<DeadLetterArchived>,
}

/// Parses a segment's bytes (gzip'd JSON lines).
pub fn decode(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_string(&mut text)
        .map_err(DecodeError::NotGzip)?;
    let mut lines = text.lines();
    let first = lines.next().ok_or(DecodeError::Empty)?;
    let Line::Header {
        format,
        cutoff,
        records,
        dead_letters: dead_count,
    } = serde_json::from_str(first).map_err(DecodeError::Header)?
    else {
        return Err(DecodeError::NoHeader);
    };
    if format != FORMAT {
        return Err(DecodeError::Format(format));
    }
    let mut rows: Vec<(RecordKey, RecordRows)> = records
        .iter()
        .map(|c| {
            (
                (c.record_type.clone(), c.record_id.clone()),
                RecordRows::default(),
            )
        })
        .collect();
    let index: HashMap<RecordKey, usize> = rows
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (k.clone(), i))
        .collect();
    let slot = |k: RecordKey| index.get(&k).copied().ok_or(DecodeError::Unlisted(k));
    let mut checkpoints = Vec::new();
    let mut dead_letters = Vec::new();
    for (n, l) in lines.enumerate() {
        let line = n + 2;
        match serde_json::from_str::<Line>(l).map_err(|error| DecodeError::Line { line, error })? {
            Line::Header { .. } => return Err(DecodeError::SecondHeader { line }),
            Line::Event(e) => {
                let i = slot((e.record_type.clone(), e.record_id.clone()))?;
                rows[i].1.events.push(e);
            }
            Line::Audit(a) => {
                let i = slot((a.record_type.clone(), a.record_id.clone()))?;
                rows[i].1.audit.push(a);
            }
            Line::Merged {
                record_type,
                record_id,
                row,
            } => {
                let i = slot((record_type, record_id))?;
                rows[i].1.merged.push(row);
            }
            Line::Checkpoint(c) => checkpoints.push(c),
            Line::DeadLetter(d) => dead_letters.push(*d),
        }
    }
    if dead_letters.len() != dead_count {
        return Err(DecodeError::DeadLetters {
            found: dead_letters.len(),
            header: dead_count,
        });
    }
    check_counts(&records, &rows)?;
    Ok(Decoded {
        cutoff,
        records,
        rows,
        checkpoints,
        dead_letters,
    })
}

/// Each record's rows as many as its header line says.
fn check_counts(records: &[Coverage], rows: &[(RecordKey, RecordRows)]) -> Result<(), DecodeError> {
    for (c, (_, r)) in records.iter().zip(rows) {
        let found = (
            r.events.len() as i64,
            r.audit.len() as i64,
            r.merged.len() as i64,
        );
        let header = (c.events, c.audit, c.merged);
        if found != header {
            return Err(DecodeError::Rows {
                record_type: c.record_type.clone(),
                record_id: c.record_id.clone(),
                found,
                header,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::rules::RecordState;

    fn event(seq: i64) -> StoredEvent {
        StoredEvent {
            id: format!("e{seq}"),
            record_type: "project".into(),
            record_id: "42".into(),
            source: "netsuite".into(),
            timestamp: "2026-03-13T10:00:00.000000Z".into(),
            base_version: seq - 1,
            changes: serde_json::json!({"status": format!("s{seq}")}),
            full_snapshot_ref: None,
            processed: true,
            sequence_num: seq,
            created_at: "2026-03-13T10:00:00.000000Z".into(),
        }
    }

    fn merged(seq: i64) -> MergedArchived {
        MergedArchived {
            sequence_num: seq,
            version: seq,
            event_id: format!("e{seq}"),
            payload: "{}".into(),
            created_at: "2026-03-13T10:00:00.000000Z".into(),
        }
    }

    /// Record project/42, events 1..=2 with their merged events.
    fn part() -> Part {
        Part {
            coverage: Coverage {
                record_type: "project".into(),
                record_id: "42".into(),
                from_seq: 1,
                to_seq: 2,
                events: 2,
                audit: 0,
                merged: 2,
            },
            rows: RecordRows {
                events: vec![event(1), event(2)],
                audit: Vec::new(),
                merged: vec![merged(1), merged(2)],
            },
            checkpoint: Checkpoint {
                record_type: "project".into(),
                record_id: "42".into(),
                sequence_num: 2,
                state: RecordState::default(),
                segment_id: String::new(),
            },
        }
    }

    fn gzip(text: &str) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(text.as_bytes()).unwrap();
        gz.finish().unwrap()
    }

    /// The JSON lines of an encoded segment, to tamper with.
    fn lines_of(bytes: &[u8]) -> Vec<String> {
        let mut text = String::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_string(&mut text)
            .unwrap();
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn a_segment_decodes_to_what_was_encoded() {
        let p = part();
        let (bytes, uncompressed) = encode("2026-03-14T00:00:00.000000Z", &[p], &[]).unwrap();
        assert_eq!(
            lines_of(&bytes).iter().map(|l| l.len() + 1).sum::<usize>(),
            uncompressed
        );
        let d = decode(&bytes).unwrap();
        let p = part();
        assert_eq!(d.cutoff, "2026-03-14T00:00:00.000000Z");
        assert_eq!(d.records, vec![p.coverage.clone()]);
        assert_eq!(d.checkpoints, vec![p.checkpoint.clone()]);
        assert!(d.dead_letters.is_empty());
        assert_eq!(d.rows.len(), 1);
        let ((t, id), rows) = &d.rows[0];
        assert_eq!((t.as_str(), id.as_str()), ("project", "42"));
        let seqs: Vec<i64> = rows.events.iter().map(|e| e.sequence_num).collect();
        assert_eq!(seqs, [1, 2]);
        assert_eq!(rows.merged, p.rows.merged);
    }

    #[test]
    fn bytes_that_are_not_a_segment_say_why() {
        let e = decode(b"plain text").err().unwrap();
        assert!(matches!(e, DecodeError::NotGzip(_)), "{e}");
        assert!(e.to_string().starts_with("not gzip'd UTF-8: "), "{e}");
        let e = decode(&gzip("")).err().unwrap();
        assert_eq!(e.to_string(), "empty segment");
        let e = decode(&gzip(
            r#"{"t":"header","r":{"format":"other/1","cutoff":"","records":[]}}"#,
        ))
        .err()
        .unwrap();
        assert_eq!(e.to_string(), r#"unknown format "other/1""#);
        let (bytes, _) = encode("c", &[part()], &[]).unwrap();
        let lines = lines_of(&bytes);
        let e = decode(&gzip(&lines[1..].join("\n"))).err().unwrap();
        assert_eq!(e.to_string(), "the first line is not a header");
        let e = decode(&gzip(&format!("{}\n{}", lines[0], lines[0])))
            .err()
            .unwrap();
        assert_eq!(e.to_string(), "line 2: a second header");
        let e = decode(&gzip(&format!("{}\nnot json", lines[0])))
            .err()
            .unwrap();
        assert!(matches!(e, DecodeError::Line { line: 2, .. }), "{e}");
    }

    #[test]
    fn rows_the_header_does_not_account_for_are_refused() {
        let (bytes, _) = encode("c", &[part()], &[]).unwrap();
        let lines = lines_of(&bytes);
        // An event dropped: the header's count no longer holds.
        let short: Vec<&str> = lines
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, l)| l.as_str())
            .collect();
        let e = decode(&gzip(&short.join("\n"))).err().unwrap();
        assert_eq!(
            e.to_string(),
            "project/42: (1, 0, 2) rows, the header says (2, 0, 2)"
        );
        // An event of a record the header does not list.
        let stray = lines[1].replace(r#""record_id":"42""#, r#""record_id":"43""#);
        let e = decode(&gzip(&format!("{}\n{stray}", lines[0])))
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            r#"row of ("project", "43"), a record the header does not list"#
        );
        // A header that promises a dead letter the segment lacks.
        let header = lines[0].replace(r#""dead_letters":0"#, r#""dead_letters":1"#);
        let e = decode(&gzip(&header)).err().unwrap();
        assert_eq!(e.to_string(), "0 dead letters, the header says 1");
    }
}
