//! Property-based fuzzing on stable Rust (proptest): the raw-event parser
//! and the fingerprint canonicalisation take generated hostile input without
//! panicking, and what they accept or produce keeps its invariants. The
//! envelope campaign (retry router, park) lives in `stages::retry::fuzz` and
//! reuses the generators here.
//!
//! `FUZZ_CASES` sets the number of generated inputs per target (default
//! 2,000, what CI runs). The long campaign, 10 million per target, with
//! this crate optimised (its dependencies keep their dev settings, so only
//! the crate itself is rebuilt):
//!
//! ```sh
//! FUZZ_CASES=10000000 cargo nextest run --lib --success-output immediate \
//!   --config 'profile.dev.package.event-backbone.opt-level=3' -E 'test(/::fuzz::/)'
//! ```
//!
//! On two free cores that takes about 7 min (parser), 1.5 min
//! (canonical JSON) and 22 min (envelopes); each test prints its count.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Map, Number, Value};

use crate::model::fingerprint::{canonical_json, fingerprint};
use crate::model::limits;
use crate::model::raw_event::{parse_raw_event, RawEvent};

fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(2_000)
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        // Hostile inputs are mostly rejected early; nothing to reject here.
        max_global_rejects: u32::MAX,
        ..Config::default()
    })
}

/// Runs `test` on `cases()` inputs from `strategy`; prints the count so a
/// campaign's log says how many inputs it took.
pub(crate) fn campaign<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value)) {
    let mut r = runner();
    let n = r.config().cases;
    let started = std::time::Instant::now();
    let result = r.run(&strategy, |v| {
        test(v);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    eprintln!(
        "fuzz {name}: {n} generated inputs, no panic, invariants held ({:.1?})",
        started.elapsed()
    );
}

// ---- generators ----
//
// Strings, byte strings and JSON trees are built from one proptest-drawn
// seed by a small PRNG rather than element by element: proptest keeps a
// value tree per element, which would cost more than the code under test
// and make a 10-million-input campaign take hours. Structure (which fields,
// which kinds of value, which limits to straddle) stays with proptest.

/// xorshift64*: deterministic from the seed proptest reports on failure.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Characters that break naive code: controls, NUL, quotes, backslashes,
/// multi-byte, RTL marks, BOM, the Unicode line separators, emoji.
const NASTY: &[char] = &[
    '\0',
    '\n',
    '\r',
    '\t',
    '\u{7f}',
    '\u{85}',
    '"',
    '\\',
    '/',
    '\'',
    ':',
    '{',
    '[',
    'é',
    'ß',
    '中',
    '\u{200f}',
    '\u{feff}',
    '\u{2028}',
    '\u{2029}',
    '😀',
    '\u{10ffff}',
    '_',
    '0',
    '9',
    ' ',
    'A',
];

fn gen_char(r: &mut Rng) -> char {
    match r.below(6) {
        0..=3 => char::from(b'a' + r.below(26) as u8),
        4 => NASTY[r.below(NASTY.len())],
        _ => char::from_u32(r.below(0x11_0000) as u32).unwrap_or('\u{fffd}'),
    }
}

fn gen_string(r: &mut Rng, len: usize) -> String {
    (0..len).map(|_| gen_char(r)).collect()
}

pub(crate) fn nasty_string(max: usize) -> impl Strategy<Value = String> {
    (any::<u64>(), 0..max).prop_map(|(seed, n)| gen_string(&mut Rng::new(seed), n))
}

/// Occasionally very long: past column widths and TEXT limits.
pub(crate) fn sized_string() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => nasty_string(24),
        2 => nasty_string(200),
        1 => (nasty_string(3), 60usize..400).prop_map(|(s, n)| s.repeat(n)),
    ]
}

const FLOATS: &[f64] = &[
    0.0,
    -0.0,
    1e16,
    1e-5,
    1e308,
    -1e-308,
    5e-324,
    0.1,
    123.456e7,
    9007199254740993.0,
    1e22,
    -2.5e-7,
];

fn gen_number(r: &mut Rng) -> Value {
    match r.below(5) {
        0 => Value::from(r.next() as i64),
        1 => Value::from(r.next()),
        2 => Value::from(r.below(1000) as i64 - 500),
        3 => Number::from_f64(f64::from_bits(r.next()))
            .map(Value::Number)
            .unwrap_or(Value::Null),
        _ => Number::from_f64(FLOATS[r.below(FLOATS.len())])
            .map(Value::Number)
            .unwrap_or(Value::Null),
    }
}

/// A JSON tree of at most `budget` nodes, `depth` levels.
fn gen_value(r: &mut Rng, depth: usize, budget: &mut usize) -> Value {
    let kinds = if depth == 0 || *budget == 0 { 4 } else { 6 };
    *budget = budget.saturating_sub(1);
    match r.below(kinds) {
        0 => Value::Null,
        1 => Value::Bool(r.below(2) == 0),
        2 => gen_number(r),
        3 => {
            let n = r.below(16);
            Value::String(gen_string(r, n))
        }
        4 => {
            let n = r.below(6);
            Value::Array((0..n).map(|_| gen_value(r, depth - 1, budget)).collect())
        }
        _ => {
            let n = r.below(6);
            Value::Object(
                (0..n)
                    .map(|_| {
                        let k = r.below(8);
                        (gen_string(r, k), gen_value(r, depth - 1, budget))
                    })
                    .collect(),
            )
        }
    }
}

fn number() -> impl Strategy<Value = Value> {
    any::<u64>().prop_map(|seed| gen_number(&mut Rng::new(seed)))
}

/// Any JSON value: mostly shallow and wide, sometimes a deep chain.
fn json_value() -> impl Strategy<Value = Value> {
    (any::<u64>(), 0usize..100, any::<bool>()).prop_map(|(seed, wrap, objects)| {
        let mut budget = 48;
        let v = gen_value(&mut Rng::new(seed), 6, &mut budget);
        // Depth up to ~106: around both limits (29 for changes, 64 for
        // the document) and under serde_json's 128.
        let wrap = if wrap < 70 { 0 } else { wrap - 66 };
        deep(v, wrap, objects)
    })
}

fn deep(mut v: Value, levels: usize, objects: bool) -> Value {
    for _ in 0..levels {
        v = if objects {
            Value::Object(Map::from_iter([("k".to_string(), v)]))
        } else {
            Value::Array(vec![v])
        };
    }
    v
}

/// Bytes with no structure at all.
fn noise(max: usize) -> impl Strategy<Value = Vec<u8>> {
    (any::<u64>(), 0..max).prop_map(|(seed, n)| {
        let mut r = Rng::new(seed);
        (0..n).map(|_| r.next() as u8).collect()
    })
}

fn timestamp() -> impl Strategy<Value = String> {
    let year = prop::sample::select(vec![
        "0000", "0001", "1969", "1970", "2000", "2026", "2037", "2038", "2039", "9999", "99999",
        "19", "-001",
    ]);
    let two = || (0u32..100).prop_map(|n| format!("{n:02}"));
    let frac = prop_oneof![
        Just(String::new()),
        (any::<u64>(), 0usize..14).prop_map(|(seed, n)| {
            let mut r = Rng::new(seed);
            let digits: String = (0..n)
                .map(|_| char::from(b'0' + r.below(10) as u8))
                .collect();
            format!(".{digits}")
        }),
    ];
    let offset = prop::sample::select(vec![
        "Z", "z", "+00:00", "+01:00", "-01:00", "+23:59", "-23:59", "+24:00", "", "+0100", "UTC",
    ]);
    let sep = prop::sample::select(vec!["T", "t", " ", "_"]);
    prop_oneof![
        8 => (year, two(), two(), sep, two(), two(), two(), frac, offset).prop_map(
            |(y, mo, d, t, h, mi, s, f, o)| format!("{y}-{mo}-{d}{t}{h}:{mi}:{s}{f}{o}")
        ),
        1 => prop::sample::select(vec![
            "1970-01-01T00:00:01Z", "1970-01-01T00:00:00.999999Z", "2038-01-19T03:14:07.999999Z",
            "2038-01-19T03:14:08Z", "2016-12-31T23:59:60Z", "2038-01-19T04:14:07.999999+01:00",
        ]).prop_map(str::to_string),
        1 => nasty_string(30),
    ]
}

/// A field's value: usually of the right type, sometimes not at all.
fn field(right: BoxedStrategy<Value>) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        10 => right.prop_map(Some),
        1 => Just(None),
        1 => Just(Some(Value::Null)),
        1 => json_value().prop_map(Some),
    ]
}

fn record_type() -> BoxedStrategy<Value> {
    prop_oneof![
        3 => (any::<u64>(), 1usize..70).prop_map(|(seed, n)| {
            let mut r = Rng::new(seed);
            Value::String((0..n).map(|_| char::from(b"abcxyz019_"[r.below(10)])).collect())
        }),
        1 => sized_string().prop_map(Value::String),
        1 => prop::sample::select(vec!["project", "a", "Project", "", "pro-ject", "_x", "1x"])
            .prop_map(|s| Value::String(s.into())),
    ]
    .boxed()
}

fn raw_document() -> impl Strategy<Value = Vec<u8>> {
    let fields = (
        field(
            prop_oneof![
                Just(Value::String("0195f0a2-7b3c-7d4e-8f00-123456789abc".into())),
                sized_string().prop_map(Value::String),
            ]
            .boxed(),
        ),
        field(record_type()),
        field(sized_string().prop_map(Value::String).boxed()),
        field(
            prop::sample::select(vec!["suitex", "netsuite", "SuiteX", "", "salesforce"])
                .prop_map(|s| Value::String(s.into()))
                .boxed(),
        ),
        field(timestamp().prop_map(Value::String).boxed()),
        field(number().boxed()),
        field(json_value().boxed()),
        field(
            prop_oneof![
                Just(Value::String("gs://bucket/snap.json".into())),
                (nasty_string(8), 0usize..1100)
                    .prop_map(|(s, n)| Value::String(format!("gs://b/{}", s.repeat(n.min(1100))))),
                sized_string().prop_map(Value::String),
            ]
            .boxed(),
        ),
    );
    let extra = prop::option::of(json_value());
    (fields, extra).prop_map(|((id, rt, rid, src, ts, bv, ch, snap), extra)| {
        let mut m = Map::new();
        for (k, v) in [
            ("id", id),
            ("record_type", rt),
            ("record_id", rid),
            ("source", src),
            ("timestamp", ts),
            ("base_version", bv),
            ("changes", ch),
            ("full_snapshot_ref", snap),
            ("extra", extra),
        ] {
            if let Some(v) = v {
                m.insert(k.to_string(), v);
            }
        }
        serde_json::to_vec(&Value::Object(m)).unwrap_or_default()
    })
}

/// A document, raw bytes, or a document with a few bytes changed.
pub(crate) fn raw_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => raw_document(),
        1 => noise(200),
        2 => (raw_document(), prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4))
            .prop_map(|(mut doc, edits)| {
                for (at, byte, op) in edits {
                    if doc.is_empty() {
                        doc.push(byte);
                        continue;
                    }
                    let i = at.index(doc.len());
                    match op {
                        0 => doc[i] = byte,
                        1 => doc.insert(i, byte),
                        _ => doc.truncate(i),
                    }
                }
                doc
            }),
    ]
}

/// What an accepted event must satisfy: everything the store needs.
fn check_accepted(ev: &RawEvent) {
    let rt = ev.record_type.as_bytes();
    assert!(!rt.is_empty() && rt.len() <= limits::RECORD_TYPE_MAX);
    assert!(rt[0].is_ascii_lowercase());
    assert!(rt
        .iter()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_'));
    assert!(!ev.record_id.is_empty() && ev.record_id.len() <= limits::RECORD_ID_MAX);
    assert!(!ev.record_id.chars().any(char::is_control));
    let secs = ev.timestamp.timestamp();
    assert!((limits::TIMESTAMP_MIN_SECS..=limits::TIMESTAMP_MAX_SECS).contains(&secs));
    assert_eq!(ev.timestamp.timestamp_subsec_nanos() % 1_000, 0);
    assert!(ev.base_version >= 0);
    let changes = Value::Object(ev.changes.clone());
    assert!(limits::json_depth(&changes, 64) <= limits::CHANGES_MAX_DEPTH);
    assert!(limits::json_len(&changes) <= limits::CHANGES_MAX_BYTES);
    if let Some(r) = &ev.full_snapshot_ref {
        assert!(r.chars().count() <= limits::SNAPSHOT_REF_MAX);
    }
    assert!(ev.full_snapshot_ref.is_some() || !ev.changes.is_empty());
    let fp = fingerprint(ev, &ev.changes);
    assert_eq!(fp.len(), 64);
    assert!(fp.bytes().all(|b| b.is_ascii_hexdigit()));
}

#[test]
fn fuzz_parse_raw_event() {
    campaign("parse_raw_event", raw_input(), |data| {
        match parse_raw_event(&data) {
            Ok(ev) => check_accepted(&ev),
            Err(e) => {
                // Every rejection names a field and says something.
                assert!(!e.field.is_empty() && !e.reason.is_empty());
            }
        }
    });
}

#[test]
fn fuzz_canonical_json_round_trips() {
    campaign("canonical_json", json_value(), |v| {
        let text = canonical_json(&v);
        // Always JSON, and the same value (Python's float spelling included).
        let back: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("canonical form is not JSON ({e}): {text}"));
        assert_eq!(back, v, "{text}");
        // Canonical means stable: canonicalising again changes nothing.
        assert_eq!(canonical_json(&back), text);
    });
}
