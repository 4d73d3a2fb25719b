//! The delivery targets: can we reach each one, and does it accept our
//! credentials (docs/spec.md §4.3)? An OAuth 2.0 target gets a token fetch; a
//! target with `probe_url` gets a signed GET. A refusal is explained in
//! words: clock skew, realm format, wrong account domain, revoked token.

use std::time::Duration;

use reqwest::header::{HeaderMap, DATE, LOCATION};

use super::report::{Check, Status};
use backbone::config::{AuthKind, Settings, Target};
use backbone::stages::deliver::answer::parse_netsuite;
use backbone::stages::deliver::auth::Auth;
use backbone::stages::deliver::http_sink::{self, HttpSink};

/// NetSuite refuses a TBA timestamp further than this from its clock.
const MAX_SKEW: Duration = Duration::from_secs(300);
/// The checks of every target with a URL whose consumer is enabled, each
/// bounded by `limit`; credentials are skipped when the host is unreachable.
pub(super) async fn checks(settings: &Settings, limit: Duration) -> Vec<Check> {
    let mut out = Vec::new();
    for (name, t, enabled) in [
        (
            "netsuite",
            &settings.targets.netsuite,
            settings.consumers.netsuite.enabled,
        ),
        (
            "suitex",
            &settings.targets.suitex,
            settings.consumers.suitex.enabled,
        ),
    ] {
        if !enabled || t.url.is_none() {
            continue;
        }
        let at = address(t);
        let reach = Check::from(
            format!("target {name}: reachable"),
            reachable(t, limit).await,
        )
        .at(&at);
        let reached = reach.ok();
        out.push(reach);
        let label = format!("target {name}: credentials ({})", t.auth_kind().as_str());
        if reached {
            out.push(credentials(name, t, limit).await.at(&at));
        } else {
            out.push(Check::skipped(label, &format!("`target {name}: reachable` failed")).at(&at));
        }
    }
    out
}

/// The target's `host:port`.
fn address(t: &Target) -> String {
    url::Url::parse(t.url.as_deref().unwrap_or_default())
        .ok()
        .map(|u| {
            format!(
                "{}:{}",
                u.host_str().unwrap_or_default(),
                u.port_or_known_default().unwrap_or(443)
            )
        })
        .unwrap_or_default()
}

/// A TCP connection to the URL's host and port (no request: a target's
/// endpoint may act on one).
async fn reachable(t: &Target, limit: Duration) -> Result<String, String> {
    let url = url::Url::parse(t.url.as_deref().unwrap_or_default()).map_err(|e| e.to_string())?;
    let host = url.host_str().unwrap_or_default().to_string();
    let port = url.port_or_known_default().unwrap_or(443);
    match tokio::time::timeout(limit, tokio::net::TcpStream::connect((host.as_str(), port))).await {
        Ok(Ok(_)) => Ok(format!("{host}:{port} accepts connections")),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Err(format!("{host}:{port}: connection refused"))
        }
        Ok(Err(e)) => Err(format!("{host}:{port}: {e}")),
        Err(_) => Err(format!(
            "{host}:{port} did not answer within {} s",
            limit.as_secs()
        )),
    }
}

async fn credentials(name: &'static str, t: &Target, limit: Duration) -> Check {
    let label = format!("target {name}: credentials ({})", t.auth_kind().as_str());
    let built = (|| -> Result<(Auth, reqwest::Client), String> {
        let client = http_sink::client(name, limit).map_err(|e| e.to_string())?;
        let auth = backbone::app::targets::auth(name, t, &client).map_err(|e| e.to_string())?;
        Ok((auth, client))
    })();
    let (auth, client) = match built {
        Ok(v) => v,
        Err(e) => return Check::from(label, Err(e)),
    };
    if let Some(source) = auth.token_source() {
        if let Err(e) = source.token().await {
            return Check::from(label, Err(format!("{e}{}", oauth2_hint(&e.to_string()))));
        }
        if t.probe_url.is_none() {
            return Check::from(
                label,
                Ok(format!("{} issued a token", source.client().token_url)),
            );
        }
    }
    let Some(probe) = &t.probe_url else {
        return match t.auth_kind() {
            AuthKind::None => Check::from(label, Ok("no authentication configured".into())),
            _ => Check {
                name: label,
                at: String::new(),
                status: Status::Warn,
                detail: format!(
                    "not checked: set targets.{name}.probe_url to a URL that answers a signed GET"
                ),
            },
        };
    };
    let Ok(url) = url::Url::parse(probe) else {
        return Check::from(label, Err(format!("targets.{name}.probe_url is not a URL")));
    };
    let sink = HttpSink::new(
        name,
        url.clone(),
        std::sync::Arc::new(auth),
        backbone::app::targets::vocabulary(t.errors),
        limit,
        client,
    );
    match sink.probe_get(&url).await {
        Ok((status, headers, body)) => Check::from(label, judge(t, status, &headers, &body)),
        Err(e) => Check::from(label, Err(format!("GET {probe}: {e}"))),
    }
}

/// What a signed GET's answer says about the credentials.
fn judge(t: &Target, status: u16, headers: &HeaderMap, body: &[u8]) -> Result<String, String> {
    if (200..300).contains(&status) || status == 405 {
        return Ok(format!("a signed GET was accepted (HTTP {status})"));
    }
    if (300..400).contains(&status) {
        let to = headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?");
        return Err(format!(
            "HTTP {status} redirect to {to}: the URL names the wrong host or NetSuite account domain; \
             use https://<account id, lower case, _ as ->.restlets.api.netsuite.com/… (redirects are never followed)"
        ));
    }
    let err = parse_netsuite(body);
    let code = err.code.clone().unwrap_or_default();
    let refused = matches!(status, 401 | 403) || code.starts_with("INVALID_LOGIN");
    if !refused {
        return Err(format!(
            "HTTP {status} {code}: the target refused the probe"
        ));
    }
    let mut why = format!("HTTP {status} {code}: the target refused our credentials.");
    if let Some(skew) = clock_skew(headers) {
        if skew.unsigned_abs() > MAX_SKEW.as_secs() {
            why.push_str(&format!(
                " Our clock is {} {} the target's: NetSuite refuses a timestamp more than 5 minutes off — fix this host's time (NTP).",
                humantime::format_duration(Duration::from_secs(skew.unsigned_abs())),
                if skew > 0 { "behind" } else { "ahead of" }
            ));
            return Err(why);
        }
    }
    match t.auth_kind() {
        AuthKind::NetsuiteTba => why.push_str(&format!(
            " Likely: the access token was revoked or its role lacks the RESTlet's permissions (Setup > Users/Roles > Access Tokens), \
             the consumer key/secret belong to another integration record, or the realm is not the account id as NetSuite shows it (here `{}`, e.g. 1234567_SB1 for a sandbox).",
            t.realm().unwrap_or_default()
        )),
        AuthKind::NetsuiteOauth2 => why.push_str(
            " Likely: the token's scope does not cover this endpoint, or the integration's role lacks permissions.",
        ),
        AuthKind::HmacSha256 | AuthKind::StandardWebhooks => {
            why.push_str(" Likely: the receiver's secret differs from ours (a rotation half done?).")
        }
        AuthKind::Bearer => why.push_str(" Likely: the token is wrong, expired or revoked."),
        AuthKind::None => why.push_str(" The target wants credentials: set targets.<t>.auth.kind."),
    }
    Err(why)
}

/// The target's clock minus ours, in seconds, from its `Date` header.
fn clock_skew(headers: &HeaderMap) -> Option<i64> {
    let date = headers.get(DATE)?.to_str().ok()?;
    let theirs = chrono::DateTime::parse_from_rfc2822(date).ok()?;
    Some(theirs.timestamp() - chrono::Utc::now().timestamp())
}

/// What a token endpoint's refusal usually means.
fn oauth2_hint(e: &str) -> &'static str {
    if e.contains("invalid_client") || e.contains("invalid_grant") {
        " — likely: the certificate id (kid) is not the one NetSuite shows for the uploaded certificate, \
         the certificate expired or was revoked, the client id is wrong, or this host's clock is off by minutes"
    } else if e.contains("could not be reached") {
        " — check the account id (the token URL is derived from it) and the egress to NetSuite"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn a_clock_six_minutes_off_is_named() {
        let mut h = HeaderMap::new();
        let theirs = chrono::Utc::now() + chrono::Duration::minutes(6);
        h.insert(DATE, HeaderValue::from_str(&theirs.to_rfc2822()).unwrap());
        let skew = clock_skew(&h).unwrap();
        assert!((355..=365).contains(&skew), "{skew}");
    }
}
