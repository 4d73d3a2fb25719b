//! The report: one line per check, and the summary that decides the exit code.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Passes, but says something the operator should know.
    Warn,
    Fail,
    /// Not run: what it needs failed first (the detail says which check).
    Skipped,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    /// What it talks to: `host:port`, or a file or folder.
    pub at: String,
    pub status: Status,
    pub detail: String,
}

impl Check {
    pub(super) fn from(name: impl Into<String>, r: Result<String, String>) -> Self {
        let (status, detail) = match r {
            Ok(d) => (Status::Ok, d),
            Err(d) => (Status::Fail, d),
        };
        Check {
            name: name.into(),
            at: String::new(),
            status,
            detail,
        }
    }

    /// A check not run because `cause` (another check) failed.
    pub(super) fn skipped(name: impl Into<String>, cause: &str) -> Self {
        Check {
            name: name.into(),
            at: String::new(),
            status: Status::Skipped,
            detail: format!("skipped: {cause}"),
        }
    }

    /// Names what the check talks to.
    pub(super) fn at(mut self, at: impl Into<String>) -> Self {
        self.at = at.into();
        self
    }

    /// Passed (possibly with a warning); a skipped check did not.
    pub fn ok(&self) -> bool {
        matches!(self.status, Status::Ok | Status::Warn)
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = match self.status {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
            Status::Skipped => "skip",
        };
        write!(
            f,
            "{status:<5} {:<38} {:<22} {}",
            self.name, self.at, self.detail
        )
    }
}

/// The summary line: every check counted, skipped ones included.
pub fn summary(results: &[Check]) -> String {
    let total = results.len();
    let failed = results.iter().filter(|c| c.status == Status::Fail).count();
    let skipped = results
        .iter()
        .filter(|c| c.status == Status::Skipped)
        .count();
    let warned = results.iter().filter(|c| c.status == Status::Warn).count();
    match (failed, skipped, warned) {
        (0, 0, 0) => format!("All {total} checks passed."),
        (0, 0, w) => format!("All {total} checks passed ({w} with a warning)."),
        (f, s, _) => format!("{f} failed, {s} skipped of {total} checks."),
    }
}

/// Prints every check and the summary; 0 when all passed, else 1.
pub(super) fn print(results: &[Check]) -> i32 {
    for c in results {
        println!("{c}");
    }
    println!("{}", summary(results));
    if results.iter().all(Check::ok) {
        0
    } else {
        1
    }
}
