//! Real targets (docs/spec.md §4.3), end to end on MariaDB as the least-privilege
//! runtime user, through the emulator, against stand-ins that answer as
//! NetSuite and a Laravel receiver do and check every signature with code
//! the project did not write (tests/it/sigcheck.py).
//!
//! Each test prints what the stand-ins saw: requests, refusals by kind,
//! token fetches, peak in flight, dead letters.

mod stand_in;
mod verifier;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use self::stand_in::{Behaviour, Check, StandIn};
use self::verifier::Verifier;
use crate::support::*;
use crate::targets::{
    circuit_cause, dead_letters, env_or, publish_flow, records, scalar, spent_attempts, vars,
};

const WAIT: Duration = Duration::from_secs(120);

fn tba_check() -> Check {
    Check::Tba {
        realm: "1234567_SB1".into(),
        consumer_key: format!("ck-{}", rand_suffix(16)),
        consumer_secret: format!("cs-{}", rand_suffix(16)),
        token_id: format!("ti-{}", rand_suffix(16)),
        token_secret: format!("ts/+&={}", rand_suffix(16)),
    }
}

/// The daemon's side of `check`: its `targets.netsuite.auth.*` keys (the
/// token secret as a mounted file, the rest as values).
fn tba_vars(check: &Check, dir: &std::path::Path) -> Vec<(String, String)> {
    let Check::Tba {
        realm,
        consumer_key,
        consumer_secret,
        token_id,
        token_secret,
    } = check
    else {
        panic!("not TBA");
    };
    let file = dir.join("token_secret");
    std::fs::write(&file, format!("{token_secret}\n")).expect("write the secret file");
    vec![
        (
            "BACKBONE__TARGETS__NETSUITE__AUTH__KIND".into(),
            "netsuite_tba".into(),
        ),
        (
            "BACKBONE__TARGETS__NETSUITE__AUTH__ACCOUNT".into(),
            realm.clone(),
        ),
        (
            "BACKBONE__TARGETS__NETSUITE__AUTH__CONSUMER_KEY".into(),
            consumer_key.clone(),
        ),
        (
            "BACKBONE__TARGETS__NETSUITE__AUTH__CONSUMER_SECRET".into(),
            consumer_secret.clone(),
        ),
        (
            "BACKBONE__TARGETS__NETSUITE__AUTH__TOKEN_ID".into(),
            token_id.clone(),
        ),
        (
            "BACKBONE__TARGETS__NETSUITE__AUTH__TOKEN_SECRET_FILE".into(),
            file.display().to_string(),
        ),
    ]
}

fn spatie_vars(secret_file: &std::path::Path) -> Vec<(String, String)> {
    vec![
        (
            "BACKBONE__TARGETS__SUITEX__AUTH__KIND".into(),
            "hmac_sha256".into(),
        ),
        (
            "BACKBONE__TARGETS__SUITEX__AUTH__SECRET_FILE".into(),
            secret_file.display().to_string(),
        ),
    ]
}

fn overrides(
    ns: &StandIn,
    sx_url: &str,
    auth: &[(String, String)],
    extra: &[(&str, &str)],
) -> Overrides {
    let auth: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Overrides::new()
        .targets(&ns.restlet_url(), sx_url)
        // No bearer tokens: each target signs as its auth.kind says (an
        // empty variable unsets the key).
        .vars(&[
            ("BACKBONE__TARGETS__NETSUITE__TOKEN", ""),
            ("BACKBONE__TARGETS__SUITEX__TOKEN", ""),
        ])
        .local_snapshots()
        .runtime_user()
        .vars(&vars())
        .vars(&auth)
        .vars(extra)
}

/// Every record of `recs` reached `version` at the stand-in.
async fn converged(target: &StandIn, recs: &[String], version: i64, within: Duration) -> bool {
    eventually(within, || async {
        let acked = target.acked();
        recs.iter().all(|r| acked.get(r).copied() == Some(version))
    })
    .await
}

/// Raw events at a steady pace for `secs`: record `i % records`, each
/// from suitex (so every one is routed to NetSuite), versions in order.
async fn publish_steadily(app: &TestApp, records: usize, pace: Duration, secs: u64) -> Vec<i64> {
    let p = publishers(&app.topology).await;
    let mut version = vec![0i64; records];
    let start = Instant::now();
    let mut i = 0usize;
    while start.elapsed() < Duration::from_secs(secs) {
        let r = i % records;
        let v = version[r];
        let ts = format!("2026-03-13T11:{:02}:{:02}.{:06}Z", (v / 60) % 60, v % 60, r);
        let ev = raw_event(
            "suitex",
            "project",
            &format!("p{r:04}"),
            v,
            &ts,
            json!({"name": format!("n{r}-v{}", v + 1), "step": v + 1}),
        );
        publish_raw(&p, &ev).await;
        version[r] += 1;
        i += 1;
        tokio::time::sleep(pace).await;
    }
    version
}

async fn dead_letter_rows(app: &TestApp) -> Vec<(String, String, String)> {
    use backbone::store::{get_opt_text, get_text};
    // MariaDB hands TEXT over as BLOB: read it as the store does.
    sqlx::query("SELECT stage, reason, last_error FROM dead_letters ORDER BY id")
        .fetch_all(app.store.pool())
        .await
        .expect("read dead_letters")
        .iter()
        .map(|row| {
            (
                get_text(row, "stage").expect("stage"),
                get_text(row, "reason").expect("reason"),
                get_opt_text(row, "last_error")
                    .expect("last_error")
                    .unwrap_or_default(),
            )
        })
        .collect()
}

/// A bulk import against a RESTlet that allows 5 requests in flight and
/// answers 400 SSS_REQUEST_LIMIT_EXCEEDED over that (the issue measured 434
/// deliveries dead-lettered `permanent` and 222 of 512 fields lost): paced,
/// nothing dead-lettered, every routed field arrives; every request signed
/// with TBA that oauthlib accepts, no nonce twice; SuiteX's requests carry
/// spatie's body signature.
#[tokio::test]
async fn real_targets_restlet_bulk_import_is_paced_not_dead_lettered_mariadb() {
    let Some(v) = Verifier::start().await else {
        return;
    };
    let check = tba_check();
    let ns = StandIn::start(
        v.clone(),
        check.clone(),
        Behaviour {
            cap: Some(5),
            latency: Duration::from_millis(20),
            ..Behaviour::default()
        },
    )
    .await;
    let secrets = tempfile::tempdir().expect("tempdir");
    let sx_secret = secrets.path().join("suitex_secret");
    std::fs::write(&sx_secret, "laravel-webhook-secret").unwrap();
    let sx = StandIn::start(
        v.clone(),
        Check::Spatie {
            secret: "laravel-webhook-secret".into(),
            strict: false,
        },
        Behaviour::default(),
    )
    .await;
    let mut auth = tba_vars(&check, secrets.path());
    auth.extend(spatie_vars(&sx_secret));
    let Some(app) = TestApp::spawn(Db::Mariadb, overrides(&ns, &sx.hook_url(), &auth, &[])).await
    else {
        return;
    };
    assert!(app.runtime_user().is_some(), "runs as the runtime user");
    let (n, versions) = (
        env_or("REAL_TARGETS_RECORDS", 200),
        env_or("REAL_TARGETS_VERSIONS", 5) as i64,
    );
    let t = Instant::now();
    publish_flow(&app, n, versions, true, Duration::ZERO).await;
    // Even records come from SuiteX (routed to NetSuite), odd from NetSuite.
    let to_ns = records(n, Some(false));
    let to_sx = records(n, Some(true));
    let ok = converged(&ns, &to_ns, versions, WAIT).await
        && converged(&sx, &to_sx, versions, WAIT).await;
    let took = t.elapsed();
    let dl = dead_letters(&app).await;
    let spent = spent_attempts(&app).await;
    let busy = ns.count("busy");
    eprintln!(
        "bulk import: {} events over {n} records in {took:?}; dead letters {dl}, attempts spent {spent}; refusals {busy}/{} = {:.1} %",
        n as i64 * versions,
        ns.requests(),
        100.0 * busy as f64 / ns.requests().max(1) as f64
    );
    eprintln!("  {}", ns.summary("netsuite (RESTlet, TBA)"));
    eprintln!("  {}", sx.summary("suitex (spatie HMAC)"));
    assert!(ok, "every record reached its last version at both targets");
    assert_eq!(dl, 0, "{:?}", dead_letter_rows(&app).await);
    assert_eq!(spent, 0, "the account's limit spends no attempt");
    assert_eq!(
        ns.count("bad_signature"),
        0,
        "oauthlib accepted every TBA signature"
    );
    assert_eq!(ns.count("nonce_reused"), 0);
    assert_eq!(
        sx.count("bad_signature"),
        0,
        "every spatie signature matched"
    );
    assert!(ns.count("ok") >= to_ns.len(), "{}", ns.summary("netsuite"));
    // Every field routed to NetSuite arrived with its final value.
    let fields = ns.fields();
    let missing: Vec<&String> = to_ns
        .iter()
        .filter(|r| {
            let i: usize = r.trim_start_matches("project:p").parse().unwrap();
            fields.get(*r).and_then(|f| f.get("name")) != Some(&json!(format!("n{i}-v{versions}")))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "fields missing at NetSuite for {} records",
        missing.len()
    );
    assert!(
        busy * 4 <= ns.requests(),
        "refusals are a small share: {}",
        ns.summary("netsuite")
    );
    app.stop().await;
}

/// OAuth 2.0 tokens that live 15 s during a minute of traffic: renewed
/// before they expire, one fetch at a time, every client assertion accepted
/// by PyJWT (PS256), nothing dead-lettered.
#[tokio::test]
async fn real_targets_oauth2_tokens_are_renewed_one_fetch_at_a_time_mariadb() {
    let Some(v) = Verifier::start().await else {
        return;
    };
    let (private, public) = v.key_pair("rsa").await;
    let lifetime = Duration::from_secs(env_or("REAL_TARGETS_TOKEN_SECS", 15) as u64);
    let check = Check::Oauth2 {
        client_id: "client-7f3a".into(),
        kid: "cert-id-1".into(),
        public_pem: public,
        lifetime,
    };
    let ns = StandIn::start(
        v.clone(),
        check,
        Behaviour {
            latency: Duration::from_millis(10),
            ..Behaviour::default()
        },
    )
    .await;
    let sx = StandIn::start(v.clone(), Check::None, Behaviour::default()).await;
    let keys = tempfile::tempdir().expect("tempdir");
    let key_file = keys.path().join("private.pem");
    std::fs::write(&key_file, private).unwrap();
    let auth = vec![
        (
            "BACKBONE__TARGETS__NETSUITE__AUTH__KIND".to_string(),
            "netsuite_oauth2".to_string(),
        ),
        (
            "BACKBONE__TARGETS__NETSUITE__AUTH__ACCOUNT".into(),
            "1234567_SB1".into(),
        ),
        (
            "BACKBONE__TARGETS__NETSUITE__AUTH__CLIENT_ID".into(),
            "client-7f3a".into(),
        ),
        (
            "BACKBONE__TARGETS__NETSUITE__AUTH__CERTIFICATE_ID".into(),
            "cert-id-1".into(),
        ),
        (
            "BACKBONE__TARGETS__NETSUITE__AUTH__PRIVATE_KEY_FILE".into(),
            key_file.display().to_string(),
        ),
        (
            "BACKBONE__TARGETS__NETSUITE__AUTH__TOKEN_URL".into(),
            ns.token_url(),
        ),
    ];
    let Some(app) = TestApp::spawn(Db::Mariadb, overrides(&ns, &sx.hook_url(), &auth, &[])).await
    else {
        return;
    };
    let secs = env_or("REAL_TARGETS_TRAFFIC_SECS", 60) as u64;
    let n = 30;
    let last = publish_steadily(&app, n, Duration::from_millis(100), secs).await;
    let recs = records(n, None);
    let ok = eventually(WAIT, || async {
        let acked = ns.acked();
        recs.iter()
            .enumerate()
            .all(|(i, r)| acked.get(r).copied() == Some(last[i]))
    })
    .await;
    let fetches = ns.count("token_issued");
    eprintln!(
        "oauth2: {} events over {secs} s, token lifetime {lifetime:?}: {fetches} tokens issued ({:?}), {} refused as expired, peak concurrent fetches {}",
        last.iter().sum::<i64>(),
        ns.algorithms(),
        ns.count("expired_token"),
        ns.token_peak()
    );
    eprintln!("  {}", ns.summary("netsuite (OAuth 2.0)"));
    assert!(ok, "every record delivered at its last version");
    assert_eq!(dead_letters(&app).await, 0);
    assert_eq!(spent_attempts(&app).await, 0);
    let expected = secs / lifetime.as_secs();
    assert!(
        fetches as u64 >= expected && fetches as u64 <= 2 * expected + 2,
        "renewed about every {lifetime:?}: {fetches} fetches in {secs} s"
    );
    assert_eq!(ns.token_peak(), 1, "one token fetch at a time");
    assert_eq!(ns.count("token_refused"), 0);
    assert_eq!(
        ns.algorithms().get("PS256").copied(),
        Some(fetches),
        "RSA keys sign PS256"
    );
    app.stop().await;
}

/// The client assertion for both key types NetSuite accepts, checked by
/// PyJWT: PS256 for RSA, ES256 for EC P-256, with the claims NetSuite reads.
#[tokio::test]
async fn real_targets_client_assertions_verify_with_pyjwt() {
    use backbone::stages::deliver::auth::oauth2::{Oauth2Client, SigningKey};
    let Some(v) = Verifier::start().await else {
        return;
    };
    for (kind, alg) in [("rsa", "PS256"), ("ec", "ES256")] {
        let (private, public) = v.key_pair(kind).await;
        let client = Oauth2Client {
            token_url:
                "https://1234567-sb1.suitetalk.api.netsuite.com/services/rest/auth/oauth2/v1/token"
                    .into(),
            client_id: "client-1".into(),
            certificate_id: "kid-1".into(),
            key: SigningKey::from_pem(private.as_bytes()).expect("the key parses"),
            scopes: vec!["restlets".into(), "rest_webservices".into()],
        };
        let jwt = client
            .assertion(chrono::Utc::now().timestamp())
            .expect("signs");
        let a = v
            .ask(
                json!({"op": "jwt", "assertion": jwt, "public_key_pem": public,
                "audience": client.token_url, "issuer": "client-1", "kid": "kid-1"}),
            )
            .await;
        assert_eq!(a["ok"], true, "{kind}: {a}");
        assert_eq!(a["alg"], alg);
        assert_eq!(
            a["claims"]["scope"],
            json!(["restlets", "rest_webservices"])
        );
        let exp = a["claims"]["exp"].as_i64().unwrap() - a["claims"]["iat"].as_i64().unwrap();
        assert!(exp > 0 && exp <= 3600, "{exp}");
        // Another key's public half refuses it.
        let (_, other) = v.key_pair(kind).await;
        let a = v
            .ask(
                json!({"op": "jwt", "assertion": jwt, "public_key_pem": other,
                "audience": client.token_url, "issuer": "client-1", "kid": "kid-1"}),
            )
            .await;
        assert_eq!(a["ok"], false, "{kind}: a wrong key is refused");
    }
}

/// Credentials refused for a minute mid-run (NetSuite answers a revoked
/// token with 401 INVALID_LOGIN_ATTEMPT): held with cause `auth`, no
/// attempt spent, nothing dead-lettered, everything delivered after.
#[tokio::test]
async fn real_targets_refused_credentials_hold_then_resume_mariadb() {
    let Some(v) = Verifier::start().await else {
        return;
    };
    let check = tba_check();
    let ns = StandIn::start(
        v.clone(),
        check.clone(),
        Behaviour {
            latency: Duration::from_millis(5),
            ..Behaviour::default()
        },
    )
    .await;
    let sx = StandIn::start(v.clone(), Check::None, Behaviour::default()).await;
    let secrets = tempfile::tempdir().expect("tempdir");
    let auth = tba_vars(&check, secrets.path());
    let Some(app) = TestApp::spawn(Db::Mariadb, overrides(&ns, &sx.hook_url(), &auth, &[])).await
    else {
        return;
    };
    let n = 20;
    let recs = records(n, Some(false));
    publish_flow(&app, n, 2, true, Duration::ZERO).await;
    assert!(
        converged(&ns, &recs, 2, WAIT).await,
        "{}",
        ns.summary("netsuite")
    );
    let before = ns.requests();

    let window = Duration::from_secs(env_or("REAL_TARGETS_REVOKED_SECS", 60) as u64);
    ns.set(|b| b.revoked = true);
    let revoked_at = Instant::now();
    // Versions 3 and 4 of every record while the credentials are refused.
    let p = publishers(&app.topology).await;
    for v in 2..4i64 {
        for r in 0..n {
            let source = if r % 2 == 1 { "netsuite" } else { "suitex" };
            let ts = format!("2026-03-13T12:{:02}:{:02}.{:06}Z", v, r % 60, r);
            let ev = raw_event(
                source,
                "project",
                &format!("p{r:04}"),
                v,
                &ts,
                json!({"name": format!("n{r}-v{}", v + 1), "step": v + 1}),
            );
            publish_raw(&p, &ev).await;
        }
    }
    let held = eventually(Duration::from_secs(30), || async {
        circuit_cause(&app, "netsuite").await.as_deref() == Some("auth")
    })
    .await;
    let cause_seen = circuit_cause(&app, "netsuite").await;
    tokio::time::sleep(window.saturating_sub(revoked_at.elapsed())).await;
    let during = (
        ns.count("revoked"),
        dead_letters(&app).await,
        spent_attempts(&app).await,
    );
    ns.set(|b| b.revoked = false);
    let ok = converged(&ns, &recs, 4, WAIT).await;
    let resumed = revoked_at.elapsed().saturating_sub(window);
    eprintln!(
        "refused credentials for {window:?}: cause {cause_seen:?}; {} requests refused (probes every <= 1 s), dead letters {}, attempts spent {}; delivered {:?} after the credentials came back",
        during.0, during.1, during.2, resumed
    );
    eprintln!("  {} (before the window: {before})", ns.summary("netsuite"));
    assert!(held, "the circuit opened with cause auth");
    assert_eq!(during.1, 0, "nothing dead-lettered while refused");
    assert_eq!(during.2, 0, "no attempt spent while refused");
    assert!(
        during.0 < 200,
        "held, only probes go out while refused: {} refused requests",
        during.0
    );
    assert!(ok, "all delivered after: {}", ns.summary("netsuite"));
    assert_eq!(dead_letters(&app).await, 0);
    assert_eq!(circuit_cause(&app, "netsuite").await, None, "closed again");
    app.stop().await;
}

/// Records NetSuite refuses with USER_ERROR (REST API error form): each
/// dead-lettered once, `permanent`, the code and message in `last_error`;
/// the others delivered; no hold.
#[tokio::test]
async fn real_targets_user_error_is_dead_lettered_with_its_code_mariadb() {
    let Some(v) = Verifier::start().await else {
        return;
    };
    let check = tba_check();
    let refused: std::collections::HashSet<String> =
        ["p0002", "p0006"].iter().map(|s| s.to_string()).collect();
    let ns = StandIn::start(
        v.clone(),
        check.clone(),
        Behaviour {
            user_error: refused.clone(),
            rest_api_errors: true,
            ..Behaviour::default()
        },
    )
    .await;
    let sx = StandIn::start(v.clone(), Check::None, Behaviour::default()).await;
    let secrets = tempfile::tempdir().expect("tempdir");
    let auth = tba_vars(&check, secrets.path());
    let Some(app) = TestApp::spawn(Db::Mariadb, overrides(&ns, &sx.hook_url(), &auth, &[])).await
    else {
        return;
    };
    let n = 10;
    publish_flow(&app, n, 1, true, Duration::ZERO).await;
    let others: Vec<String> = records(n, Some(false))
        .into_iter()
        .filter(|r| !refused.iter().any(|x| r.ends_with(x.as_str())))
        .collect();
    assert!(
        converged(&ns, &others, 1, WAIT).await,
        "{}",
        ns.summary("netsuite")
    );
    assert!(
        eventually(WAIT, || async { dead_letters(&app).await >= 2 }).await,
        "the refused records are parked"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rows = dead_letter_rows(&app).await;
    eprintln!("USER_ERROR: {rows:?}\n  {}", ns.summary("netsuite"));
    assert_eq!(rows.len(), 2, "once each: {rows:?}");
    for (stage, reason, last_error) in &rows {
        assert_eq!(stage, "deliver.netsuite");
        assert_eq!(reason, "permanent");
        assert!(
            last_error.contains("USER_ERROR") && last_error.contains("field 'status'"),
            "{last_error}"
        );
    }
    assert_eq!(
        ns.count("user_error"),
        2,
        "no retries of a permanent refusal"
    );
    assert_eq!(
        circuit_cause(&app, "netsuite").await,
        None,
        "a record's refusal holds nothing"
    );
    app.stop().await;
}

/// Two replicas with `account_concurrency = 3`: never more than 3 requests
/// in flight at the target, across both; SuiteX through Standard Webhooks.
#[tokio::test]
async fn real_targets_two_replicas_share_the_account_concurrency_mariadb() {
    let Some(v) = Verifier::start().await else {
        return;
    };
    let check = tba_check();
    let ns = StandIn::start(
        v.clone(),
        check.clone(),
        Behaviour {
            latency: Duration::from_millis(40),
            ..Behaviour::default()
        },
    )
    .await;
    let whsec = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let sx = StandIn::start(
        v.clone(),
        Check::StandardWebhooks {
            secret: whsec.into(),
        },
        Behaviour::default(),
    )
    .await;
    let secrets = tempfile::tempdir().expect("tempdir");
    let mut auth = tba_vars(&check, secrets.path());
    auth.push((
        "BACKBONE__TARGETS__SUITEX__AUTH__KIND".into(),
        "standard_webhooks".into(),
    ));
    auth.push((
        "BACKBONE__TARGETS__SUITEX__AUTH__SECRET".into(),
        whsec.into(),
    ));
    let extra = [
        ("BACKBONE__TARGETS__NETSUITE__ACCOUNT_CONCURRENCY", "3"),
        ("BACKBONE__TARGETS__NETSUITE__INITIAL_CONCURRENCY", "8"),
    ];
    let Some(mut app) =
        TestApp::spawn(Db::Mariadb, overrides(&ns, &sx.hook_url(), &auth, &extra)).await
    else {
        return;
    };
    app.start().await;
    let (n, versions) = (100, 4);
    publish_flow(&app, n, versions, true, Duration::ZERO).await;
    let ok = converged(&ns, &records(n, Some(false)), versions, WAIT).await
        && converged(&sx, &records(n, Some(true)), versions, WAIT).await;
    let held_slots = scalar(
        &app.store,
        "SELECT COUNT(*) FROM target_slots WHERE target = 'netsuite' AND claim IS NOT NULL",
    )
    .await;
    let ready: Value = reqwest::get(format!("http://{}/readyz", app.metrics_addr()))
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    eprintln!(
        "two replicas, account_concurrency 3: {}; slots still held {held_slots}; /readyz netsuite {}",
        ns.summary("netsuite"),
        ready["targets"][0]
    );
    eprintln!("  {}", sx.summary("suitex (Standard Webhooks)"));
    assert!(ok, "converged at both targets");
    assert!(ns.peak() <= 3, "never more than 3 in flight: {}", ns.peak());
    assert!(ns.peak() >= 2, "the cap is used: {}", ns.peak());
    assert_eq!(
        sx.count("bad_signature"),
        0,
        "the Standard Webhooks library accepted every request"
    );
    assert_eq!(dead_letters(&app).await, 0);
    assert_eq!(ready["targets"][0]["account_concurrency"], 3);
    app.stop().await;
}

/// SuiteX with the wrong secret: spatie answers 500 (its default), a
/// stricter receiver 401: held (cause outage, then auth), nothing
/// dead-lettered; the right secret written to the mounted file is picked
/// up without a restart and everything is delivered.
#[tokio::test]
async fn real_targets_suitex_wrong_secret_holds_until_the_file_is_fixed_mariadb() {
    let Some(v) = Verifier::start().await else {
        return;
    };
    let ns = StandIn::start(v.clone(), Check::None, Behaviour::default()).await;
    let sx = StandIn::start(
        v.clone(),
        Check::Spatie {
            secret: "the-right-secret".into(),
            strict: false,
        },
        Behaviour::default(),
    )
    .await;
    let secrets = tempfile::tempdir().expect("tempdir");
    let file = secrets.path().join("suitex_secret");
    std::fs::write(&file, "a-wrong-secret").unwrap();
    let auth = spatie_vars(&file);
    let Some(app) = TestApp::spawn(Db::Mariadb, overrides(&ns, &sx.hook_url(), &auth, &[])).await
    else {
        return;
    };
    let n = 12;
    publish_flow(&app, n, 2, true, Duration::ZERO).await;
    let open = eventually(Duration::from_secs(30), || async {
        circuit_cause(&app, "suitex").await.is_some()
    })
    .await;
    let first_cause = circuit_cause(&app, "suitex").await;
    // A receiver that answers 401: the probes now say the cause is auth.
    sx.set_check(Check::Spatie {
        secret: "the-right-secret".into(),
        strict: true,
    });
    let auth_cause = eventually(Duration::from_secs(20), || async {
        circuit_cause(&app, "suitex").await.as_deref() == Some("auth")
    })
    .await;
    let refused = sx.count("bad_signature");
    let dl_while = dead_letters(&app).await;
    // The operator fixes the mounted secret (a new file, as the kubelet swaps it).
    let next = secrets.path().join("suitex_secret.new");
    std::fs::write(&next, "the-right-secret\n").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&next)
        .unwrap()
        .set_modified(std::time::SystemTime::now() + Duration::from_secs(2))
        .unwrap();
    std::fs::rename(&next, &file).unwrap();
    let ok = converged(&sx, &records(n, Some(true)), 2, WAIT).await;
    eprintln!(
        "wrong SuiteX secret: circuit {first_cause:?} on spatie's 500, then {:?} on 401; {refused} requests refused, dead letters {dl_while}; delivered after the file was fixed: {ok}",
        if auth_cause { "auth" } else { "not auth" }
    );
    eprintln!("  {}", sx.summary("suitex"));
    assert!(open, "held: the circuit opened");
    assert!(auth_cause, "401s say auth");
    assert_eq!(dl_while, 0, "not dead-lettered");
    assert!(ok, "delivered once the secret file is right");
    assert_eq!(dead_letters(&app).await, 0);
    assert_eq!(spent_attempts(&app).await, 0);
    app.stop().await;
}

/// `doctor` checks a target's credentials with a signed GET to its
/// `probe_url` and says what a refusal means: accepted; a clock 6 minutes
/// off named as such; a revoked token named as likely.
#[tokio::test]
async fn real_targets_doctor_checks_credentials_and_names_a_skewed_clock() {
    use event_backbone::commands::doctor;
    let Some(v) = Verifier::start().await else {
        return;
    };
    let check = tba_check();
    let ns = StandIn::start(v.clone(), check.clone(), Behaviour::default()).await;
    let secrets = tempfile::tempdir().expect("tempdir");
    let auth = tba_vars(&check, secrets.path());
    let probe = ns.restlet_url();
    let o = overrides(
        &ns,
        &ns.hook_url(),
        &auth,
        &[("BACKBONE__TARGETS__NETSUITE__PROBE_URL", &probe)],
    );
    let Some(app) = TestApp::prepare(Db::Sqlite, o).await else {
        return;
    };
    let line = |checks: &[doctor::Check]| {
        checks
            .iter()
            .find(|c| c.name.starts_with("target netsuite: credentials"))
            .cloned()
            .expect("a credentials check")
    };
    let good = line(&doctor::target_checks(&app.settings).await);
    eprintln!("{good}");
    assert!(good.ok(), "{good}");
    assert!(good.name.contains("netsuite_tba"), "{good}");

    ns.set(|b| b.clock_offset = 360);
    let checks = doctor::target_checks(&app.settings).await;
    let skewed = line(&checks);
    eprintln!("{skewed}");
    assert!(!skewed.ok());
    assert!(
        skewed.detail.contains("6m")
            && skewed.detail.contains("behind")
            && skewed.detail.contains("NTP"),
        "{skewed}"
    );
    let reach = checks
        .iter()
        .find(|c| c.name == "target netsuite: reachable")
        .expect("reachable");
    assert!(reach.ok(), "{reach}");

    ns.set(|b| {
        b.clock_offset = 0;
        b.revoked = true;
    });
    let revoked = line(&doctor::target_checks(&app.settings).await);
    eprintln!("{revoked}");
    assert!(!revoked.ok());
    assert!(
        revoked.detail.contains("INVALID_LOGIN_ATTEMPT") && revoked.detail.contains("revoked"),
        "{revoked}"
    );
}
