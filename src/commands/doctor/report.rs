//! The report: one line per check, and the summary that decides the exit code.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Passes, but says something the operator should know.
    Warn,
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
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
            status,
            detail,
        }
    }

    /// Passed (possibly with a warning).
    pub fn ok(&self) -> bool {
        self.status != Status::Fail
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = match self.status {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        write!(f, "{status:<5} {:<42} {}", self.name, self.detail)
    }
}

/// Prints every check and the summary; 0 when none failed, else 1.
pub(super) fn print(results: &[Check]) -> i32 {
    for c in results {
        println!("{c}");
    }
    let failed = results.iter().filter(|c| !c.ok()).count();
    let warned = results.iter().filter(|c| c.status == Status::Warn).count();
    if failed == 0 && warned > 0 {
        println!(
            "All {} checks passed ({warned} with a warning).",
            results.len()
        );
        0
    } else if failed == 0 {
        println!("All {} checks passed.", results.len());
        0
    } else {
        println!("{failed} of {} checks failed.", results.len());
        1
    }
}
