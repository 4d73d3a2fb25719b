//! The operator console over plain HTTP (docs/spec.md §7.1): login and its
//! refusals, the session cookie's attributes, CSRF on every POST, the admin
//! API's token check left intact, the console disabled without a token,
//! issues grouped in SQL over 10,000 parked dead letters on SQLite and
//! MariaDB (the render time printed), and every page read through the
//! least-privilege runtime user's grants.

use std::time::{Duration, Instant};

use backbone::admin::{self, AdminState};
use sqlx::{Any, QueryBuilder};
use tokio_util::sync::CancellationToken;

use crate::support::*;

pub(crate) const TOKEN: &str = "console-test-token";

/// A logged-in console client (no redirects followed: the tests look at them).
pub(crate) struct ConsoleClient {
    pub base: String,
    pub http: reqwest::Client,
    pub cookie: String,
}

pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client")
}

impl ConsoleClient {
    pub async fn login(base: &str, token: &str) -> ConsoleClient {
        let http = http();
        let r = http
            .post(format!("{base}/console/login"))
            .form(&[("token", token), ("operator", "it-test")])
            .send()
            .await
            .expect("login");
        assert_eq!(r.status(), 303, "login redirects");
        let set = r
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .expect("a session cookie")
            .to_string();
        let cookie = set.split(';').next().expect("name=value").to_string();
        ConsoleClient {
            base: base.to_string(),
            http,
            cookie,
        }
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .send()
            .await
            .expect("GET");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }

    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .form(form)
            .send()
            .await
            .expect("POST")
    }

    /// The CSRF token a page's forms carry.
    pub async fn csrf(&self) -> String {
        let (_, html) = self.get("/console").await;
        csrf_in(&html).expect("a CSRF field on the overview")
    }
}

pub(crate) fn csrf_in(html: &str) -> Option<String> {
    let at = html.find("name=\"csrf\" value=\"")? + "name=\"csrf\" value=\"".len();
    Some(html[at..].split('"').next()?.to_string())
}

/// The admin listener (API and console) on the app's admin address.
async fn serve(app: &TestApp, store: backbone::store::Store) -> CancellationToken {
    let stop = CancellationToken::new();
    let state = AdminState::new(store, &app.settings);
    admin::serve(&app.settings, state, stop.clone())
        .await
        .expect("admin listener")
        .expect("enabled");
    stop
}

#[tokio::test]
async fn console_login_sessions_csrf_and_refusals() {
    let app = TestApp::prepare(Db::Sqlite, Overrides::new().admin(TOKEN))
        .await
        .expect("sqlite");
    app.migrate().await;
    let stop = serve(&app, app.store.clone()).await;
    let base = format!("http://{}", app.admin_addr());
    let http = http();

    // No session: pages send to the login page, POSTs are refused.
    let r = http.get(format!("{base}/console")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/console/login");
    let r = http
        .get(format!("{base}/console/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    assert_eq!(r.headers()["cache-control"], "no-store");
    let r = http
        .post(format!("{base}/console/actions/replay"))
        .form(&[("csrf", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a POST without a session");

    // A wrong token: 401, no cookie.
    let r = http
        .post(format!("{base}/console/login"))
        .form(&[("token", "not-the-token")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("set-cookie").is_none(), "no cookie");

    // The admin token: an HttpOnly, SameSite=Strict cookie scoped to /console.
    let r = http
        .post(format!("{base}/console/login"))
        .header("x-forwarded-proto", "https")
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/console", "Secure"] {
        assert!(set.contains(attr), "{attr} in {set}");
    }
    let c = ConsoleClient::login(&base, TOKEN).await;
    let (status, html) = c.get("/console").await;
    assert_eq!(status, 200);
    assert!(html.contains("Logged in as"), "{html}");
    let csrf = c.csrf().await;

    // Every POST checks the CSRF token: missing or wrong → 403.
    for path in [
        "/console/actions/replay",
        "/console/actions/preview",
        "/console/actions/discard",
        "/console/actions/pause",
        "/console/actions/resume",
        "/console/actions/resync",
        "/console/logout",
    ] {
        let r = c.post(path, &[("target", "netsuite")]).await;
        assert_eq!(r.status(), 403, "{path} without a CSRF token");
        let r = c
            .post(path, &[("csrf", "0badc0de"), ("target", "netsuite")])
            .await;
        assert_eq!(r.status(), 403, "{path} with a wrong CSRF token");
    }
    // Another session's token does not do either.
    let other = ConsoleClient::login(&base, TOKEN).await;
    let r = c
        .post("/console/actions/replay", &[("csrf", &other.csrf().await)])
        .await;
    assert_eq!(r.status(), 403, "another session's CSRF token");

    // With it: the action runs and redirects back with a flash message.
    let r = c
        .post(
            "/console/actions/pause",
            &[("csrf", &csrf), ("target", "netsuite"), ("reason", "test")],
        )
        .await;
    assert_eq!(r.status(), 303);
    let flash = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(flash.contains("netsuite+is+paused"), "{flash}");
    let paused = count(
        &app.store,
        "SELECT COUNT(*) FROM target_controls WHERE target = 'netsuite' AND paused = 1",
    )
    .await;
    assert_eq!(paused, 1, "the pause is stored");

    // The admin API still wants its bearer token, unknown paths included.
    for path in ["/admin/dlq", "/admin/nothing-here"] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let r = http
            .get(format!("{base}{path}"))
            .header("cookie", &c.cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            401,
            "{path}: a console session is not a bearer token"
        );
    }

    // Logout clears the cookie.
    let r = c.post("/console/logout", &[("csrf", &csrf)]).await;
    assert_eq!(r.status(), 303);
    assert!(r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    stop.cancel();
}

#[tokio::test]
async fn console_is_disabled_without_an_admin_token() {
    let app = TestApp::prepare(Db::Sqlite, Overrides::new())
        .await
        .unwrap();
    let router = admin::router(AdminState::new(app.store.clone(), &app.settings));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    for path in ["/console", "/console/login", "/console/targets"] {
        let r = http()
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503, "{path}");
        assert!(r.text().await.unwrap().contains("console is disabled"));
    }
}

/// 10,000 parked dead letters of three kinds, ids and numbers varying.
async fn park_many(store: &backbone::store::Store, n: usize) {
    for start in (0..n).step_by(500) {
        let mut q: QueryBuilder<Any> = QueryBuilder::new(
            "INSERT INTO dead_letters (dlq_message_id, stage, reason, attempts, record_type, \
             record_id, last_error, errors, data, attributes) ",
        );
        q.push_values(start..(start + 500).min(n), |mut b, i| {
            let rid = format!("p{i:05}");
            let (stage, reason, err) = match i % 3 {
                0 => (
                    "deliver.netsuite",
                    "permanent",
                    format!(
                        "netsuite answered HTTP 400 USER_ERROR: Invalid value for {rid}, line {i}"
                    ),
                ),
                1 => (
                    "deliver.suitex",
                    "exhausted",
                    format!("suitex answered HTTP 503: maintenance, attempt {}", i % 7),
                ),
                _ => ("merge", "invalid", format!("raw event {i} has no changes")),
            };
            b.push_bind(format!("perf-{i}"))
                .push_bind(stage)
                .push_bind(reason)
                .push_bind(5)
                .push_bind("project")
                .push_bind(rid)
                .push_bind(err)
                .push_bind("[]")
                .push_bind(vec![b'{', b'}'])
                .push_bind("{}");
        });
        q.build().execute(store.pool()).await.expect("insert");
    }
}

async fn groups_of_10k(db: Db) {
    let Some(app) = TestApp::prepare(db, Overrides::new().admin(TOKEN)).await else {
        return;
    };
    app.migrate().await;
    let n = 10_000;
    park_many(&app.store, n).await;
    let stop = serve(&app, app.store.clone()).await;
    let c = ConsoleClient::login(&format!("http://{}", app.admin_addr()), TOKEN).await;

    let t = Instant::now();
    let (status, html) = c.get("/console/dead-letters").await;
    let groups_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(status, 200);
    assert!(
        html.contains("10000 open dead letter(s) in 3 issue(s)"),
        "{html}"
    );
    assert!(html.contains("USER_ERROR"), "the NetSuite code is shown");

    let page = app
        .store
        .dead_letter_groups(&Default::default(), 0, 10)
        .await
        .expect("groups");
    let mut counts: Vec<(String, i64, i64)> = page
        .groups
        .iter()
        .map(|g| (g.key.stage.clone(), g.count, g.records))
        .collect();
    counts.sort();
    assert_eq!(
        counts,
        [
            ("deliver.netsuite".to_string(), 3334, 3334),
            ("deliver.suitex".to_string(), 3333, 3333),
            ("merge".to_string(), 3333, 3333),
        ]
    );
    let ns = page
        .groups
        .iter()
        .find(|g| g.key.stage == "deliver.netsuite")
        .unwrap();
    assert_eq!(ns.key.status, "400");
    assert_eq!(
        ns.key.message,
        "netsuite answered HTTP # USER_ERROR: Invalid value for {id}, line #"
    );

    // One issue's first page, and the overview.
    let t = Instant::now();
    let (status, html) = c
        .get("/console/dead-letters/list?stage=merge&group=1&g_stage=merge&g_reason=invalid&g_status=&g_msg=raw+event+%23+has+no+changes")
        .await;
    let list_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(status, 200);
    assert_eq!(html.matches("name=\"id\"").count(), 100, "a page of 100");
    let t = Instant::now();
    let (status, _) = c.get("/console").await;
    let overview_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(status, 200);
    println!(
        "console over {n} parked dead letters ({db:?}): issues page {groups_ms:.0} ms, \
         one issue's first page {list_ms:.0} ms, overview {overview_ms:.0} ms"
    );
    stop.cancel();
}

#[tokio::test]
async fn console_groups_10k_dead_letters_sqlite() {
    groups_of_10k(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn console_groups_10k_dead_letters_mariadb() {
    groups_of_10k(Db::Mariadb).await;
}

/// Every page reads through the runtime user's grants (sql/grants-mysql.sql).
#[tokio::test(flavor = "multi_thread")]
async fn console_pages_read_as_the_runtime_user_mariadb() {
    let Some(app) =
        TestApp::prepare(Db::Mariadb, Overrides::new().admin(TOKEN).runtime_user()).await
    else {
        return;
    };
    assert!(app.runtime_user().is_some());
    park_many(&app.store, 30).await;
    let as_runtime = backbone::app::connect_store(&app.settings)
        .await
        .expect("the runtime user's store");
    let stop = serve(&app, as_runtime).await;
    let c = ConsoleClient::login(&format!("http://{}", app.admin_addr()), TOKEN).await;
    for path in [
        "/console",
        "/console/dead-letters",
        "/console/dead-letters/list?reason=invalid",
        "/console/dead-letters/1",
        "/console/targets",
        "/console/records",
    ] {
        let (status, html) = c.get(path).await;
        assert_eq!(status, 200, "{path}: {html}");
        assert!(!html.contains("Could not read"), "{path}: {html}");
    }
    stop.cancel();
    app.stop().await;
}
