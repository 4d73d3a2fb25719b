//! The independent signature checker (tests/it/sigcheck.py: oauthlib,
//! PyJWT + cryptography, Python's hmac, the Standard Webhooks library) as a
//! child process the stand-ins ask, one JSON line per question.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Mutex;

struct Pipe {
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    _child: Child,
}

#[derive(Clone)]
pub struct Verifier(Arc<Mutex<Pipe>>);

/// The venv's Python when it has the checkers; None (after saying why)
/// when not, which fails under CI.
pub fn python() -> Option<PathBuf> {
    let py = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/services/venv/bin/python");
    let ok = std::process::Command::new(&py)
        .args(["-c", "import oauthlib, jwt, cryptography, standardwebhooks"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(py);
    }
    let why = format!(
        "the signature checkers (oauthlib, PyJWT, cryptography, standardwebhooks) are not in {} (run scripts/tools.sh)",
        py.display()
    );
    if std::env::var("CI").is_ok() {
        panic!("{why}; CI must check signatures independently");
    }
    eprintln!("skipping: {why}");
    None
}

impl Verifier {
    pub async fn start() -> Option<Verifier> {
        let py = python()?;
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/sigcheck.py");
        let mut child = Command::new(py)
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Never outlives the test.
            .kill_on_drop(true)
            .spawn()
            .expect("start sigcheck.py");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Some(Verifier(Arc::new(Mutex::new(Pipe {
            stdin,
            stdout,
            _child: child,
        }))))
    }

    /// One question; the answer's JSON.
    pub async fn ask(&self, question: Value) -> Value {
        let mut p = self.0.lock().await;
        let mut line = question.to_string();
        line.push('\n');
        p.stdin
            .write_all(line.as_bytes())
            .await
            .expect("write to sigcheck.py");
        p.stdin.flush().await.expect("flush");
        let mut answer = String::new();
        p.stdout
            .read_line(&mut answer)
            .await
            .expect("read from sigcheck.py");
        serde_json::from_str(&answer)
            .unwrap_or_else(|e| panic!("sigcheck.py answered {answer:?}: {e}"))
    }

    /// A key pair (`rsa` or `ec`): private and public PEM.
    pub async fn key_pair(&self, kind: &str) -> (String, String) {
        let a = self
            .ask(serde_json::json!({"op": "genkey", "kind": kind}))
            .await;
        (
            a["private_pem"].as_str().expect("private").to_string(),
            a["public_pem"].as_str().expect("public").to_string(),
        )
    }
}
