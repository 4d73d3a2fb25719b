//! The W3C trace context a message's attributes may carry, so the log lines
//! written while handling it link to the publisher's trace.

use std::collections::HashMap;

/// The W3C trace context of a message, if its publisher sent one: the
/// `googclient_traceparent` attribute the Google client libraries add when
/// OpenTelemetry is on, or a plain `traceparent`. Returns (trace id, span id).
pub fn trace_context(attributes: &HashMap<String, String>) -> Option<(String, String)> {
    let tp = attributes
        .get("googclient_traceparent")
        .or_else(|| attributes.get("traceparent"))?;
    // version-traceid-spanid-flags, e.g. 00-4bf9…4736-00f0…02b7-01
    let mut parts = tp.trim().split('-');
    let (_version, trace, span) = (parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(trace, 32) || !hex(span, 16) || trace.bytes().all(|b| b == b'0') {
        return None;
    }
    Some((trace.to_ascii_lowercase(), span.to_ascii_lowercase()))
}
