//! Just enough of the W3C WebDriver protocol (sessions, navigation, find,
//! click, type, text, page source, screenshots) over the HTTP client the
//! tests already build with: no WebDriver crate in the dependency tree.
//! Drives Debian's chromedriver and headless chromium (scripts/tools.sh).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// W3C's key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver this test started (its own process group), stopped on drop.
pub struct Chromedriver {
    child: Child,
    pub url: String,
    pid_file: Option<PathBuf>,
}

/// Field 22 of /proc/<pid>/stat (start time), as scripts/pids.sh records it.
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19).map(str::to_string)
}

impl Chromedriver {
    /// `None` (with the reason printed) when chromium is not installed;
    /// under CI=true that is a failure instead.
    pub async fn start() -> Option<Chromedriver> {
        if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
            let msg = format!(
                "{CHROMIUM} or {CHROMEDRIVER} is missing; run scripts/tools.sh \
                 (Debian's chromium and chromium-driver)"
            );
            if std::env::var("CI").is_ok() {
                panic!("{msg}");
            }
            println!("SKIPPED: {msg}");
            return None;
        }
        let port = crate::support::free_port();
        let mut cmd = Command::new(CHROMEDRIVER);
        cmd.arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Its own process group: the browsers it starts go with it.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().expect("start chromedriver");
        let pid_file = std::env::var_os("BACKBONE_TEST_PID_DIR").and_then(|dir| {
            let path = PathBuf::from(dir).join(format!("chromedriver-{port}.pid"));
            let line = format!("{} {} chromedriver\n", child.id(), start_time(child.id())?);
            std::fs::write(&path, line).ok().map(|_| path)
        });
        let url = format!("http://127.0.0.1:{port}");
        let d = Chromedriver {
            child,
            url,
            pid_file,
        };
        let http = reqwest::Client::new();
        let ready = crate::support::eventually(Duration::from_secs(20), || async {
            http.get(format!("{}/status", d.url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        assert!(ready, "chromedriver never answered /status");
        Some(d)
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        // The group this test made (its pid is the group id), then the driver.
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", self.child.id())])
            .status();
        std::thread::sleep(Duration::from_millis(300));
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(p) = &self.pid_file {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// One browser session.
pub struct Browser {
    http: reqwest::Client,
    session: String,
    /// Where screenshots go.
    pub shots: PathBuf,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn open(driver: &Chromedriver, shots: PathBuf) -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1360,1100",
                         format!("--user-data-dir={}", profile.path().display())]
            }
        }}});
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("http client");
        let r: Value = http
            .post(format!("{}/session", driver.url))
            .json(&caps)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("session JSON");
        let id = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {r}"))
            .to_string();
        std::fs::create_dir_all(&shots).expect("screenshot dir");
        Browser {
            http,
            session: format!("{}/session/{id}", driver.url),
            shots,
            _profile: profile,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("webdriver {path}: {e}"))
    }

    /// A call, its WebDriver error as `Err`.
    async fn try_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Value> {
        let mut req = self.http.request(method, format!("{}{path}", self.session));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req
            .send()
            .await
            .expect("webdriver call")
            .json()
            .await
            .expect("webdriver JSON");
        if v["value"]["error"].is_string() {
            return Err(v["value"].clone());
        }
        Ok(v["value"].clone())
    }

    pub async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    pub async fn url(&self) -> String {
        let v = self.call(reqwest::Method::GET, "/url", None).await;
        v.as_str().unwrap_or_default().to_string()
    }

    /// The element `css` selects, waiting up to 10 s for it (a click that
    /// submits a form returns before the next page is there).
    pub async fn find(&self, css: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = self
                .try_call(
                    reqwest::Method::POST,
                    "/element",
                    Some(json!({"using": "css selector", "value": css})),
                )
                .await;
            match r {
                Ok(v) => return v[ELEMENT].as_str().expect("an element").to_string(),
                Err(e) if std::time::Instant::now() > deadline => {
                    panic!("no element {css}: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// The page's text once it contains `needle` (up to 10 s: the page a
    /// click led to may still be loading), or the last text read.
    pub async fn wait_text(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.text().await;
            if text.contains(needle) || std::time::Instant::now() > deadline {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The URL once it ends with `suffix` (up to 10 s), or the last one.
    pub async fn wait_url(&self, suffix: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let url = self.url().await;
            if url.ends_with(suffix) || std::time::Instant::now() > deadline {
                return url;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/click"),
            Some(json!({})),
        )
        .await;
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    /// The visible text of the page's body.
    pub async fn text(&self) -> String {
        for _ in 0..50 {
            let e = self.find("body").await;
            // The page may change between the two calls (a stale element).
            let r = self
                .try_call(reqwest::Method::GET, &format!("/element/{e}/text"), None)
                .await;
            if let Ok(v) = r {
                return v.as_str().unwrap_or_default().to_string();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the page's text could not be read");
    }

    /// Saves the viewport as `<name>.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let v = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("base64 PNG"))
            .expect("PNG bytes");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }

    pub async fn close(self) {
        let _ = self.http.delete(&self.session).send().await;
    }
}
