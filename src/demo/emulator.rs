//! Starting the official Pub/Sub emulator for the demo when
//! `PUBSUB_EMULATOR_HOST` is unset.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::DemoError;

/// Where the Debian/Ubuntu package `google-cloud-cli-pubsub-emulator` puts it.
pub const DEFAULT_BIN: &str =
    "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator";
/// Overrides the emulator launcher's location.
pub const ENV_VAR_BIN: &str = "PUBSUB_EMULATOR_BIN";
/// How to get the emulator, shown when it is missing.
pub const INSTALL_HINT: &str =
    "install it with `apt-get install google-cloud-cli-pubsub-emulator` \
     (or `gcloud components install pubsub-emulator`; it needs Java 11+), \
     or point PUBSUB_EMULATOR_HOST at a running emulator";

/// How long the JVM may take to open its port.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// A running emulator, killed when stopped or dropped.
pub struct Emulator {
    child: tokio::process::Child,
    /// `127.0.0.1:port`.
    pub host: String,
    pub log: PathBuf,
}

/// The emulator launcher: `PUBSUB_EMULATOR_BIN`, the package's path, or the
/// one next to a `gcloud` found on PATH.
pub fn find() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(ENV_VAR_BIN).map(PathBuf::from) {
        return p.is_file().then_some(p);
    }
    let default = PathBuf::from(DEFAULT_BIN);
    if default.is_file() {
        return Some(default);
    }
    // gcloud lives in <sdk>/bin; the emulator in <sdk>/platform/pubsub-emulator.
    let gcloud = which("gcloud")?.canonicalize().ok()?;
    let sdk = gcloud.parent()?.parent()?;
    let bin = sdk.join("platform/pubsub-emulator/bin/cloud-pubsub-emulator");
    bin.is_file().then_some(bin)
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn java_available() -> bool {
    std::env::var_os("JAVA_HOME").is_some_and(|h| Path::new(&h).join("bin/java").is_file())
        || which("java").is_some()
}

/// A port nobody listens on right now.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Emulator {
    /// Starts the emulator on a free port and waits until it accepts
    /// connections. Its output goes to `log`.
    pub async fn start(log: &Path) -> Result<Emulator, DemoError> {
        let Some(bin) = find() else {
            return Err(DemoError::EmulatorMissing {
                hint: INSTALL_HINT.to_string(),
            });
        };
        if !java_available() {
            return Err(DemoError::EmulatorMissing {
                hint: format!(
                    "found {} but no Java runtime; install one (e.g. `apt-get install default-jre-headless`)",
                    bin.display()
                ),
            });
        }
        let port = free_port().map_err(|e| DemoError::setup("finding a free port", e))?;
        let host = format!("127.0.0.1:{port}");
        let out = std::fs::File::create(log)
            .map_err(|e| DemoError::setup(format!("creating {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| DemoError::setup(format!("opening {}", log.display()), e))?;
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.arg("--host=127.0.0.1")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own process group: Ctrl-C reaches the demo, which drains the
            // daemon first and only then stops the emulator.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| DemoError::setup(format!("starting {}", bin.display()), e))?;
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(DemoError::EmulatorExited {
                    status: status.to_string(),
                    log: log.to_path_buf(),
                });
            }
            if tokio::net::TcpStream::connect(&host).await.is_ok() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = child.start_kill();
                return Err(DemoError::Timeout {
                    what: format!(
                        "the Pub/Sub emulator to listen on {host} (see {})",
                        log.display()
                    ),
                    after: START_TIMEOUT,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(Emulator {
            child,
            host,
            log: log.to_path_buf(),
        })
    }

    /// Kills the emulator (it keeps everything in memory) and reaps it.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}
