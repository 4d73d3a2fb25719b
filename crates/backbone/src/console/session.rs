//! The console's session (docs/spec.md §7.1): stateless, so every replica
//! accepts a cookie another one issued. A session is `expiry.nonce.operator`
//! signed with HMAC-SHA256 under a key derived from the admin token; the
//! CSRF token of a session is an HMAC of the whole cookie. Changing the
//! admin token therefore ends every session.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The cookie's name.
pub const COOKIE: &str = "backbone_console";
/// How long a login lasts.
pub const LIFETIME_SECS: i64 = 12 * 3600;
/// Longest operator name kept (it goes into audit rows).
pub const OPERATOR_MAX: usize = 64;

/// The keys of one admin token.
#[derive(Clone)]
pub struct Keys {
    /// SHA-256 of the admin token: what a login is compared with.
    token_digest: [u8; 32],
    /// Signs sessions and CSRF tokens.
    session_key: [u8; 32],
}

/// A valid session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The cookie's value, as sent.
    pub cookie: String,
    /// Who logged in, as they called themselves (the token names no one).
    pub operator: String,
    /// Seconds since the epoch.
    pub expires: i64,
}

impl Keys {
    /// `None` for a missing or blank token: the console is then disabled.
    pub fn from_token(token: Option<&str>) -> Option<Keys> {
        let token = token.map(str::trim).filter(|t| !t.is_empty())?;
        let token_digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let session_key = mac_bytes(&token_digest, b"event-backbone console session v1");
        Some(Keys {
            token_digest,
            session_key,
        })
    }

    /// Whether `presented` is the admin token, in constant time.
    pub fn token_matches(&self, presented: &str) -> bool {
        let got: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        constant_time_eq(&got, &self.token_digest)
    }

    /// A new session for `operator`, valid from `now` (seconds).
    pub fn issue(&self, operator: &str, now: i64) -> Session {
        let nonce: [u8; 16] = rand::random();
        let operator = clean_operator(operator);
        let expires = now + LIFETIME_SECS;
        let body = format!(
            "{expires}.{}.{}",
            hex::encode(nonce),
            URL_SAFE_NO_PAD.encode(operator.as_bytes())
        );
        let sig = hex::encode(mac_bytes(&self.session_key, body.as_bytes()));
        Session {
            cookie: format!("{body}.{sig}"),
            operator,
            expires,
        }
    }

    /// The session a cookie value carries, if it is ours and not expired.
    pub fn verify(&self, cookie: &str, now: i64) -> Option<Session> {
        let (body, sig) = cookie.rsplit_once('.')?;
        let sig = hex::decode(sig).ok()?;
        let mut mac = HmacSha256::new_from_slice(&self.session_key).ok()?;
        mac.update(body.as_bytes());
        // verify_slice compares in constant time.
        mac.verify_slice(&sig).ok()?;
        let mut parts = body.splitn(3, '.');
        let expires: i64 = parts.next()?.parse().ok()?;
        let _nonce = parts.next()?;
        let operator = String::from_utf8(URL_SAFE_NO_PAD.decode(parts.next()?).ok()?).ok()?;
        (now < expires).then(|| Session {
            cookie: cookie.to_string(),
            operator,
            expires,
        })
    }

    /// The CSRF token every form of `session` carries.
    pub fn csrf(&self, session: &Session) -> String {
        let mut input = b"csrf:".to_vec();
        input.extend_from_slice(session.cookie.as_bytes());
        hex::encode(mac_bytes(&self.session_key, &input))
    }

    /// Whether `presented` is `session`'s CSRF token, in constant time.
    pub fn csrf_matches(&self, session: &Session, presented: &str) -> bool {
        let want = self.csrf(session);
        want.len() == presented.len()
            && want
                .bytes()
                .zip(presented.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

fn mac_bytes(key: &[u8], data: &[u8]) -> [u8; 32] {
    // Cannot fail: HMAC takes keys of any length.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// An operator name fit for a cookie and an audit row: printable, trimmed,
/// at most [`OPERATOR_MAX`] characters; `console` when none is given.
pub fn clean_operator(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .filter(|c| !c.is_control())
        .take(OPERATOR_MAX)
        .collect();
    let cleaned = cleaned.trim();
    if cleaned.is_empty() {
        "console".to_string()
    } else {
        cleaned.to_string()
    }
}

/// The `Set-Cookie` value of a session (`secure` when the request came
/// over HTTPS, e.g. through an ingress that says so).
pub fn set_cookie(session: &Session, secure: bool) -> String {
    format!(
        "{COOKIE}={}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={LIFETIME_SECS}{}",
        session.cookie,
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that ends a session in the browser.
pub fn clear_cookie(secure: bool) -> String {
    format!(
        "{COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn keys() -> Keys {
        Keys::from_token(Some("s3cret")).expect("a token")
    }

    #[test]
    fn a_blank_token_disables_the_console() {
        assert!(Keys::from_token(None).is_none());
        assert!(Keys::from_token(Some("  ")).is_none());
    }

    #[test]
    fn only_the_admin_token_logs_in() {
        let k = keys();
        assert!(k.token_matches("s3cret"));
        assert!(k.token_matches(" s3cret\n"));
        assert!(!k.token_matches("s3cre"));
        assert!(!k.token_matches(""));
    }

    #[test]
    fn a_session_verifies_until_it_expires_and_under_its_own_token_only() {
        let k = keys();
        let s = k.issue("Ana <on call>", NOW);
        let back = k.verify(&s.cookie, NOW + 10).expect("valid");
        assert_eq!(back.operator, "Ana <on call>");
        assert!(k.verify(&s.cookie, NOW + LIFETIME_SECS).is_none());
        let other = Keys::from_token(Some("another")).expect("a token");
        assert!(other.verify(&s.cookie, NOW).is_none());
    }

    #[test]
    fn a_tampered_session_is_refused() {
        let k = keys();
        let s = k.issue("ana", NOW);
        let (body, sig) = s.cookie.rsplit_once('.').expect("signed");
        // A later expiry with the old signature.
        let later = body.replacen(&s.expires.to_string(), &(s.expires + 1000).to_string(), 1);
        assert!(k.verify(&format!("{later}.{sig}"), NOW).is_none());
        assert!(k.verify(body, NOW).is_none());
        assert!(k.verify("", NOW).is_none());
        assert!(k.verify("1.2.3.zz", NOW).is_none());
    }

    #[test]
    fn csrf_tokens_belong_to_their_session() {
        let k = keys();
        let a = k.issue("a", NOW);
        let b = k.issue("a", NOW);
        assert!(k.csrf_matches(&a, &k.csrf(&a)));
        assert!(!k.csrf_matches(&a, &k.csrf(&b)));
        assert!(!k.csrf_matches(&a, ""));
    }

    #[test]
    fn cookies_are_http_only_strict_and_scoped_to_the_console() {
        let s = keys().issue("", NOW);
        assert_eq!(s.operator, "console");
        let c = set_cookie(&s, false);
        for part in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
            assert!(c.contains(part), "{c}");
        }
        assert!(!c.contains("Secure"));
        assert!(set_cookie(&s, true).ends_with("; Secure"));
        assert!(clear_cookie(false).contains("Max-Age=0"));
        let header = format!("a=1; {COOKIE}={}; b=2", s.cookie);
        assert_eq!(cookie_value(&header, COOKIE), Some(s.cookie.as_str()));
        assert_eq!(cookie_value("a=1", COOKIE), None);
    }

    #[test]
    fn operator_names_are_cut_and_cleaned() {
        assert_eq!(clean_operator(" bo\nb "), "bob");
        assert_eq!(clean_operator(&"x".repeat(100)).len(), OPERATOR_MAX);
    }
}
