//! Event fingerprints (docs/spec.md §3.2): lowercase hex SHA-256 over a canonical JSON
//! form that publishers can reproduce with Python's
//! `json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`.
//!
//! The canonical writer is hand-written rather than `serde_json::to_string`
//! because serde_json formats floats differently from Python (`1e16` vs
//! `1e+16`, `0.00001` vs `1e-05`); strings, integers and key order already
//! agree, and are reproduced here byte for byte.
//!
//! Floats can only be as exact as the parsed `Value`: without serde_json's
//! `float_roundtrip` feature its parser is sometimes 1 ULP off for 16–17
//! significant digit numbers, and the fingerprint then differs from Python's.

use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::model::raw_event::RawEvent;

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`: always UTC, always exactly 6 fractional digits,
/// so the same instant has one spelling whatever offset the publisher used.
pub fn format_timestamp(ts: &DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Canonical JSON: keys sorted by code point at every depth, no whitespace,
/// non-ASCII left as UTF-8, Python-compatible escapes and number spelling.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, v);
    out
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Fingerprint of a message that is not a valid raw event JSON document: the
/// raw bytes are all there is to deduplicate on.
pub fn fingerprint_bytes(data: &[u8]) -> String {
    sha256_hex(data)
}

/// The exact string [`fingerprint`] hashes. `changes` is passed separately
/// because, for a claim-check event, it is the resolved snapshot rather than
/// the (empty) inline `changes`.
pub fn canonical_form(ev: &RawEvent, changes: &Map<String, Value>) -> String {
    // Written field by field (keys already in code-point order) to avoid
    // cloning `changes`, which may be a multi-megabyte snapshot.
    let mut out = String::with_capacity(160);
    out.push_str("{\"base_version\":");
    let _ = write!(out, "{}", ev.base_version);
    out.push_str(",\"changes\":");
    write_object(&mut out, changes);
    out.push_str(",\"record_id\":");
    write_string(&mut out, &ev.record_id);
    out.push_str(",\"record_type\":");
    write_string(&mut out, &ev.record_type);
    out.push_str(",\"source\":");
    write_string(&mut out, ev.source.as_str());
    out.push_str(",\"timestamp\":");
    write_string(&mut out, &format_timestamp(&ev.timestamp));
    out.push('}');
    out
}

/// docs/spec.md §3.2 fingerprint of a raw event.
pub fn fingerprint(ev: &RawEvent, changes: &Map<String, Value>) -> String {
    sha256_hex(canonical_form(ev, changes).as_bytes())
}

fn write_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => write_object(out, map),
    }
}

fn write_object(out: &mut String, map: &Map<String, Value>) {
    // serde_json::Map is a BTreeMap here (no `preserve_order`): iteration is
    // in byte order of the UTF-8 keys, which equals code-point order.
    out.push('{');
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(out, k);
        out.push(':');
        write_value(out, v);
    }
    out.push('}');
}

/// Python's `ensure_ascii=False` escaping: only `"`, `\` and C0 controls are
/// escaped; other controls use `\u00xx` with lowercase hex. DEL, U+2028 etc.
/// are emitted raw, as Python does.
fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_number(out: &mut String, n: &serde_json::Number) {
    if n.is_f64() {
        write_python_float(out, &n.to_string());
    } else {
        // Integers print the same in serde_json and Python.
        let _ = write!(out, "{n}");
    }
}

/// Respells a finite float from serde_json's shortest round-trip output
/// (e.g. `1e16`, `-0.0001`, `1.5e-7`, `123.0`) as Python's `float.__repr__`:
/// the same digits, in scientific notation when the decimal exponent is < -4
/// or >= 16 with a signed, at least two-digit exponent (`1e+16`, `1e-05`),
/// otherwise fixed with at least one fractional digit (`100.0`).
///
/// serde_json's digits are used rather than Rust's `{:e}` because on exact
/// ties (e.g. -760054728867112.25) std picks the upper digit while Python and
/// serde_json pick the even one.
fn write_python_float(out: &mut String, shortest: &str) {
    let (neg, body) = match shortest.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, shortest),
    };
    let (mantissa, exp) = match body.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (body, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    // Significant digits and the decimal point's position relative to them.
    let mut decpt = int_part.len() as i32 + exp;
    let all: String = int_part.chars().chain(frac_part.chars()).collect();
    let trimmed = all.trim_start_matches('0');
    decpt -= (all.len() - trimmed.len()) as i32;
    let digits = trimmed.trim_end_matches('0');

    if neg {
        out.push('-');
    }
    if digits.is_empty() {
        out.push_str("0.0");
        return;
    }
    if !(-4 < decpt && decpt <= 16) {
        let (first, rest) = digits.split_at(1);
        out.push_str(first);
        if !rest.is_empty() {
            out.push('.');
            out.push_str(rest);
        }
        let e = decpt - 1;
        let sign = if e < 0 { '-' } else { '+' };
        let _ = write!(out, "e{sign}{:02}", e.unsigned_abs());
    } else if decpt <= 0 {
        out.push_str("0.");
        for _ in 0..(-decpt) {
            out.push('0');
        }
        out.push_str(digits);
    } else {
        let decpt = decpt as usize;
        if decpt >= digits.len() {
            out.push_str(digits);
            for _ in digits.len()..decpt {
                out.push('0');
            }
            out.push_str(".0");
        } else {
            let (int, frac) = digits.split_at(decpt);
            out.push_str(int);
            out.push('.');
            out.push_str(frac);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::raw_event::parse_raw_event;
    use serde_json::json;

    const VECTOR: &str = r#"{"source":"suitex","record_type":"project","record_id":"42","base_version":7,
 "timestamp":"2026-03-13T21:00:00.123456+01:00",
 "changes":{"status":"open","name":"Nouveau café","budget":1200,"tags":["a","b"],"owner":null}}"#;
    const VECTOR_CANONICAL: &str = r#"{"base_version":7,"changes":{"budget":1200,"name":"Nouveau café","owner":null,"status":"open","tags":["a","b"]},"record_id":"42","record_type":"project","source":"suitex","timestamp":"2026-03-13T20:00:00.123456Z"}"#;
    const VECTOR_FINGERPRINT: &str =
        "f75d99c1e0c568cf385c002504d0fefc7e1aa3b6845b909e1cc28f3706b50d1e";

    fn fp_of(json: &str) -> String {
        let ev = parse_raw_event(json.as_bytes()).expect("valid event");
        fingerprint(&ev, &ev.changes)
    }

    #[test]
    fn spec_test_vector() {
        let ev = parse_raw_event(VECTOR.as_bytes()).expect("valid event");
        assert_eq!(canonical_form(&ev, &ev.changes), VECTOR_CANONICAL);
        assert_eq!(fingerprint(&ev, &ev.changes), VECTOR_FINGERPRINT);
    }

    #[test]
    fn canonical_form_equals_generic_canonical_json() {
        let ev = parse_raw_event(VECTOR.as_bytes()).expect("valid event");
        let obj = json!({
            "base_version": ev.base_version,
            "changes": Value::Object(ev.changes.clone()),
            "record_id": ev.record_id,
            "record_type": ev.record_type,
            "source": ev.source.as_str(),
            "timestamp": format_timestamp(&ev.timestamp),
        });
        assert_eq!(canonical_json(&obj), canonical_form(&ev, &ev.changes));
    }

    #[test]
    fn resolved_changes_are_used() {
        let ev = parse_raw_event(VECTOR.as_bytes()).expect("valid event");
        let mut other = ev.changes.clone();
        other.insert("status".into(), json!("closed"));
        assert_ne!(fingerprint(&ev, &other), fingerprint(&ev, &ev.changes));
        assert!(canonical_form(&ev, &other).contains(r#""status":"closed""#));
    }

    #[test]
    fn key_order_independence() {
        let a = r#"{"source":"netsuite","record_type":"task","record_id":"x-1","base_version":3,
            "timestamp":"2026-01-02T03:04:05.000006Z",
            "changes":{"z":{"b":1,"a":{"y":[{"q":1,"p":2}],"x":null}},"a":true}}"#;
        let b = r#"{"changes":{"a":true,"z":{"a":{"x":null,"y":[{"p":2,"q":1}]},"b":1}},
            "timestamp":"2026-01-02T03:04:05.000006Z","base_version":3,
            "record_id":"x-1","record_type":"task","source":"netsuite","extra":"ignored"}"#;
        assert_eq!(fp_of(a), fp_of(b));
        let ev = parse_raw_event(a.as_bytes()).expect("valid event");
        assert_eq!(
            canonical_form(&ev, &ev.changes),
            r#"{"base_version":3,"changes":{"a":true,"z":{"a":{"x":null,"y":[{"p":2,"q":1}]},"b":1}},"record_id":"x-1","record_type":"task","source":"netsuite","timestamp":"2026-01-02T03:04:05.000006Z"}"#
        );
    }

    #[test]
    fn array_order_matters() {
        let a = r#"{"source":"suitex","record_type":"t","record_id":"1","base_version":0,
            "timestamp":"2026-01-01T00:00:00Z","changes":{"tags":["a","b"]}}"#;
        let b = a.replace(r#"["a","b"]"#, r#"["b","a"]"#);
        assert_ne!(fp_of(a), fp_of(&b));
    }

    #[test]
    fn keys_sorted_by_code_point() {
        // Upper case < lower case < non-ASCII, as in Python's sort_keys.
        let v = json!({"é": 1, "b": 2, "B": 3, "a": 4, "€": 5, "_": 6});
        assert_eq!(
            canonical_json(&v),
            r#"{"B":3,"_":6,"a":4,"b":2,"é":1,"€":5}"#
        );
    }

    #[test]
    fn unicode_not_escaped() {
        let v = json!({"name": "Nouveau café ☕ 日本 \u{1F600} \u{2028}"});
        let s = canonical_json(&v);
        assert_eq!(s, "{\"name\":\"Nouveau café ☕ 日本 \u{1F600} \u{2028}\"}");
        assert!(!s.contains("\\u"));
    }

    #[test]
    fn control_characters_escaped_like_python() {
        let v = json!("a\nb\tc\rd\u{08}e\u{0c}f\u{0}g\u{1f}h\u{7f}i\"j\\k/l");
        // Python: json.dumps(s, ensure_ascii=False)
        assert_eq!(
            canonical_json(&v),
            "\"a\\nb\\tc\\rd\\be\\ff\\u0000g\\u001fh\u{7f}i\\\"j\\\\k/l\""
        );
        assert_eq!(canonical_json(&json!("\u{1b}")), r#""\u001b""#);
    }

    #[test]
    fn strings_agree_with_serde_json() {
        let mut s = String::new();
        for c in (0u32..0x100).filter_map(char::from_u32) {
            s.push(c);
        }
        let v = Value::String(s);
        assert_eq!(canonical_json(&v), serde_json::to_string(&v).expect("ser"));
    }

    #[test]
    fn numbers_like_python() {
        // Expected strings are Python's json.dumps output for the same values.
        let cases: &[(Value, &str)] = &[
            (json!(0), "0"),
            (json!(-5), "-5"),
            (json!(u64::MAX), "18446744073709551615"),
            (json!(i64::MIN), "-9223372036854775808"),
            (json!(1.0), "1.0"),
            (json!(-0.0), "-0.0"),
            (json!(1.5), "1.5"),
            (json!(100.0), "100.0"),
            (json!(0.1), "0.1"),
            (json!(0.0001), "0.0001"),
            (json!(0.00001), "1e-05"),
            (json!(1.5e-7), "1.5e-07"),
            (json!(123456.789), "123456.789"),
            (json!(1e15), "1000000000000000.0"),
            (json!(1e16), "1e+16"),
            (json!(1.2345e16), "1.2345e+16"),
            (json!(1e100), "1e+100"),
            (json!(-2.5e-300), "-2.5e-300"),
            (json!(f64::MAX), "1.7976931348623157e+308"),
            (json!(5e-324), "5e-324"),
            // Exact tie between two shortest spellings: Python keeps the even digit.
            // (-760054728867112.25 exactly; std's `{}` would print ...112.3.)
            (
                json!(f64::from_bits(0xC305_9A20_40FD_E942)),
                "-760054728867112.2",
            ),
            (json!(1e-4 + 0.0), "0.0001"),
            (json!(9999999999999998.0), "9999999999999998.0"),
            (json!(1e22), "1e+22"),
        ];
        for (v, want) in cases {
            assert_eq!(canonical_json(v), *want, "value {v:?}");
        }
    }

    #[test]
    fn parsed_float_spellings_normalised() {
        let v: Value = serde_json::from_str(r#"[1E2,1.50,2e-5,7.0]"#).expect("json");
        assert_eq!(canonical_json(&v), "[100.0,1.5,2e-05,7.0]");
    }

    #[test]
    fn no_whitespace() {
        let v: Value =
            serde_json::from_str("{ \"a\" : [ 1 , { \"b\" : null } ] , \"c\" : \"d e\" }")
                .expect("json");
        assert_eq!(canonical_json(&v), r#"{"a":[1,{"b":null}],"c":"d e"}"#);
    }

    #[test]
    fn timestamp_offsets_normalised() {
        let base = r#"{"source":"suitex","record_type":"project","record_id":"42","base_version":7,"changes":{"a":1},"timestamp":"TS"}"#;
        let z = fp_of(&base.replace("TS", "2026-03-13T20:00:00.123456Z"));
        let plus1 = fp_of(&base.replace("TS", "2026-03-13T21:00:00.123456+01:00"));
        let minus5 = fp_of(&base.replace("TS", "2026-03-13T15:00:00.123456-05:00"));
        let lower_z = fp_of(&base.replace("TS", "2026-03-13t20:00:00.123456z"));
        let trailing = fp_of(&base.replace("TS", "2026-03-13T20:00:00.123456000Z"));
        assert_eq!(z, plus1);
        assert_eq!(z, minus5);
        assert_eq!(z, lower_z);
        assert_eq!(z, trailing);
        let other = fp_of(&base.replace("TS", "2026-03-13T20:00:00.123457Z"));
        assert_ne!(z, other);
    }

    #[test]
    fn format_timestamp_always_six_digits() {
        let t = DateTime::parse_from_rfc3339("2026-03-13T21:00:00+01:00")
            .expect("ts")
            .with_timezone(&Utc);
        assert_eq!(format_timestamp(&t), "2026-03-13T20:00:00.000000Z");
        let t = DateTime::parse_from_rfc3339("2026-03-13T20:00:00.5Z")
            .expect("ts")
            .with_timezone(&Utc);
        assert_eq!(format_timestamp(&t), "2026-03-13T20:00:00.500000Z");
        let t = DateTime::parse_from_rfc3339("1999-12-31T23:59:59.000001-00:30")
            .expect("ts")
            .with_timezone(&Utc);
        assert_eq!(format_timestamp(&t), "2000-01-01T00:29:59.000001Z");
    }

    #[test]
    fn sha256_and_bytes_fingerprint() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            fingerprint_bytes(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            fingerprint_bytes(b"\xff\xfe not json"),
            sha256_hex(b"\xff\xfe not json")
        );
    }
}
