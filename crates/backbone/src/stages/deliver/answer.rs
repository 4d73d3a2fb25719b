//! What a target's answer other than 2xx means (docs/spec.md §4, §4.2, §4.3), in
//! its own vocabulary: HTTP statuses, and for NetSuite also the error code
//! in the body. Pure: the sink reads the answer, this decides.

use std::time::Duration;

use super::auth::excerpt;
use crate::stages::{ErrorClass, StageError};

/// How the target's refusals are read (`targets.<t>.errors`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vocabulary {
    Http,
    Netsuite,
}

/// NetSuite's answers to an account over its concurrency limit: pacing.
const NETSUITE_BUSY: &[&str] = &[
    "SSS_REQUEST_LIMIT_EXCEEDED",
    "CONCURRENCY_LIMIT_EXCEEDED",
    "WS_REQUEST_BLOCKED",
];
/// NetSuite's answers to credentials it does not accept.
const NETSUITE_LOGIN: &[&str] = &["INVALID_LOGIN_ATTEMPT", "INVALID_LOGIN"];

/// The most of an error body quoted in `last_error` (≤ 1 KiB in all).
const QUOTED: usize = 300;

/// What a failed request says, as pacing and the circuit read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// 429, 503 with `Retry-After`, or NetSuite's concurrency codes: slow down.
    Throttled {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// The connection was refused: nobody listens there.
    Unreachable,
    /// No answer within the timeout.
    Timeout,
    /// A 5xx (or 408).
    Server(u16),
    /// Reset or broken mid-request.
    Broken,
    /// Another 4xx: the target refuses this message.
    Rejected(u16),
    /// The credentials were refused (401, 403, NetSuite's login codes, a
    /// token endpoint's refusal); `fresh` when nobody had used them before.
    Auth { status: u16, fresh: bool },
    /// A redirect (never followed): a wrong URL or account domain.
    Misconfigured(u16),
}

/// The parts of an error body that name what went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorBody {
    pub code: Option<String>,
    pub message: Option<String>,
}

/// A RESTlet's `{"error":{"code","message"}}` or the REST API's
/// `{"o:errorDetails":[{"o:errorCode","detail"}]}`.
pub fn parse_netsuite(body: &[u8]) -> ErrorBody {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return ErrorBody::default();
    };
    let s = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    if let Some(e) = v.get("error").filter(|e| e.is_object()) {
        return ErrorBody {
            code: s(&e["code"]),
            message: s(&e["message"]),
        };
    }
    if let Some(d) = v["o:errorDetails"].as_array().and_then(|a| a.first()) {
        return ErrorBody {
            code: s(&d["o:errorCode"]),
            message: s(&d["detail"]).or_else(|| s(&v["title"])),
        };
    }
    ErrorBody::default()
}

/// spatie/laravel-webhook-client answers a bad signature with a 500 whose
/// text (when the app shows it) names the signature.
fn names_a_bad_signature(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(&body[..body.len().min(4096)]).to_lowercase();
    text.contains("invalidwebhooksignature")
        || (text.contains("signature")
            && (text.contains("invalid") || text.contains("does not match")))
}

/// Classifies a non-2xx answer: the signal for pacing and the stage error
/// (class and `last_error` text) for when it is the message's own.
pub fn classify(
    target: &str,
    vocabulary: Vocabulary,
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
    fresh: bool,
) -> (Signal, StageError) {
    let parsed = match vocabulary {
        Vocabulary::Netsuite => parse_netsuite(body),
        Vocabulary::Http => ErrorBody::default(),
    };
    let code = parsed.code.as_deref().unwrap_or_default();
    let signal = if NETSUITE_BUSY.contains(&code)
        || status == 429
        || (status == 503 && retry_after.is_some())
    {
        Signal::Throttled {
            status,
            retry_after,
        }
    } else if NETSUITE_LOGIN.contains(&code) || status == 401 || status == 403 {
        Signal::Auth { status, fresh }
    } else if (300..400).contains(&status) {
        Signal::Misconfigured(status)
    } else if vocabulary == Vocabulary::Http && status == 500 && names_a_bad_signature(body) {
        Signal::Auth { status, fresh }
    } else if status == 408 || (500..600).contains(&status) {
        Signal::Server(status)
    } else {
        Signal::Rejected(status)
    };
    let class = match signal {
        Signal::Throttled { .. } | Signal::Server(_) => ErrorClass::Transient,
        // A single 401 while others pass may be a token that just expired.
        Signal::Auth { status, .. } if status != 403 => ErrorClass::Transient,
        _ => ErrorClass::Permanent,
    };
    let mut message = format!("{target} answered HTTP {status}");
    match (&parsed.code, &parsed.message) {
        (Some(c), Some(m)) => message.push_str(&format!(" {c}: {}", excerpt(m.as_bytes(), QUOTED))),
        (Some(c), None) => message.push_str(&format!(" {c}")),
        _ => {
            let quoted = excerpt(body, QUOTED);
            if !quoted.is_empty() {
                message.push_str(": ");
                message.push_str(&quoted);
            }
        }
    }
    match signal {
        Signal::Auth { .. } => message.push_str(" (the target refused our credentials)"),
        Signal::Misconfigured(_) => message.push_str(
            " (a redirect, not followed: the URL or the NetSuite account domain is wrong)",
        ),
        _ => {}
    }
    let mut err = StageError::new(class, message);
    if class == ErrorClass::Transient {
        err.retry_after = retry_after;
    }
    (signal, err)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: Vocabulary = Vocabulary::Netsuite;
    const HTTP: Vocabulary = Vocabulary::Http;

    fn signal(v: Vocabulary, status: u16, body: &str) -> Signal {
        classify("t", v, status, None, body.as_bytes(), false).0
    }

    #[test]
    fn statuses_keep_their_meaning_in_both_vocabularies() {
        for v in [NS, HTTP] {
            for s in [408, 500, 502, 504, 599] {
                assert_eq!(signal(v, s, ""), Signal::Server(s), "{s}");
                assert_eq!(
                    classify("t", v, s, None, b"", false).1.class,
                    ErrorClass::Transient
                );
            }
            assert!(matches!(signal(v, 429, ""), Signal::Throttled { .. }));
            for s in [400, 404, 409, 410, 422, 451] {
                assert_eq!(signal(v, s, ""), Signal::Rejected(s));
                assert_eq!(
                    classify("t", v, s, None, b"", false).1.class,
                    ErrorClass::Permanent
                );
            }
            assert_eq!(
                signal(v, 401, ""),
                Signal::Auth {
                    status: 401,
                    fresh: false
                }
            );
            assert_eq!(
                classify("t", v, 401, None, b"", false).1.class,
                ErrorClass::Transient
            );
            assert_eq!(
                classify("t", v, 403, None, b"", false).1.class,
                ErrorClass::Permanent
            );
            for s in [301, 302, 307, 308] {
                assert_eq!(signal(v, s, ""), Signal::Misconfigured(s), "never followed");
            }
        }
        let (s, _) = classify("t", HTTP, 503, Some(Duration::from_secs(3)), b"", false);
        assert_eq!(
            s,
            Signal::Throttled {
                status: 503,
                retry_after: Some(Duration::from_secs(3))
            }
        );
    }

    #[test]
    fn netsuite_codes_are_read_from_restlet_and_rest_api_bodies() {
        let restlet = |code: &str| format!(r#"{{"error":{{"code":"{code}","message":"m"}}}}"#);
        for code in NETSUITE_BUSY {
            assert!(
                matches!(
                    signal(NS, 400, &restlet(code)),
                    Signal::Throttled { status: 400, .. }
                ),
                "{code}"
            );
            assert_eq!(
                signal(HTTP, 400, &restlet(code)),
                Signal::Rejected(400),
                "http ignores codes"
            );
        }
        for code in NETSUITE_LOGIN {
            assert_eq!(
                signal(NS, 400, &restlet(code)),
                Signal::Auth {
                    status: 400,
                    fresh: false
                }
            );
        }
        let rest = r#"{"type":"https://…","title":"Bad Request","status":400,
            "o:errorDetails":[{"detail":"Invalid value for the resource or sub-resource field 'entity'.","o:errorCode":"USER_ERROR"}]}"#;
        let (s, e) = classify("netsuite", NS, 400, None, rest.as_bytes(), false);
        assert_eq!(s, Signal::Rejected(400));
        assert_eq!(e.class, ErrorClass::Permanent);
        assert_eq!(
            e.message,
            "netsuite answered HTTP 400 USER_ERROR: Invalid value for the resource or sub-resource field 'entity'."
        );
        let busy = r#"{"o:errorDetails":[{"detail":"Concurrent request limit exceeded.","o:errorCode":"CONCURRENCY_LIMIT_EXCEEDED"}]}"#;
        assert!(matches!(signal(NS, 429, busy), Signal::Throttled { .. }));
    }

    #[test]
    fn a_laravel_signature_failure_reads_as_authentication() {
        let page = "<html>Spatie\\WebhookClient\\Exceptions\\InvalidWebhookSignature: The signature is invalid.</html>";
        assert_eq!(
            signal(HTTP, 500, page),
            Signal::Auth {
                status: 500,
                fresh: false
            }
        );
        assert_eq!(signal(HTTP, 500, "Server Error"), Signal::Server(500));
    }

    #[test]
    fn messages_quote_a_capped_body_on_one_line() {
        let long = "x".repeat(5000);
        let (_, e) = classify(
            "suitex",
            HTTP,
            502,
            None,
            format!("bad\ngateway {long}").as_bytes(),
            false,
        );
        assert!(
            e.message
                .starts_with("suitex answered HTTP 502: bad gateway x"),
            "{}",
            e.message
        );
        assert!(e.message.len() < 400, "{}", e.message.len());
        assert!(e.message.ends_with('…'));
    }
}
