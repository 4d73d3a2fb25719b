//! What processes used, from /proc (Linux only): the daemon's peak RSS and
//! CPU, and where the machine's CPU went. A file of its own so that the
//! report can name [`MachineCpu`] without importing `daemon` (which imports
//! the report's `StepMean`): the files import one way.

/// Peak resident set size of a process, from /proc (Linux only).
pub(super) fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// CPU time (user + system) a process has used so far, from /proc (Linux
/// only; `/proc/<pid>/stat` counts in USER_HZ, 100 per second on Linux).
pub(super) fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count from its ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let ticks = |i: usize| fields.get(i - 3)?.parse::<f64>().ok();
    Some((ticks(14)? + ticks(15)?) / 100.0)
}

/// CPU seconds so far of every process whose command name is `comm`
/// (`java` for the emulator, `mariadbd`), from /proc.
fn cpu_of_comm(comm: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .filter_map(|pid| cpu_seconds(&pid))
        .sum()
}

/// Where a window's CPU went on this machine: the emulator, the database,
/// the daemon (when one runs) and this process (stand-ins, ack-only client).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub(super) struct MachineCpu {
    pub(super) emulator: f64,
    pub(super) database: f64,
    pub(super) daemon: f64,
    pub(super) bench: f64,
}

impl MachineCpu {
    /// CPU seconds so far; `daemon` is the child's pid, if one runs.
    pub(super) fn now(daemon: Option<u32>) -> Self {
        Self {
            emulator: cpu_of_comm("java"),
            database: cpu_of_comm("mariadbd"),
            daemon: daemon
                .and_then(|p| cpu_seconds(&p.to_string()))
                .unwrap_or(0.0),
            bench: cpu_seconds("self").unwrap_or(0.0),
        }
    }

    pub(super) fn since(&self, before: &Self) -> Self {
        Self {
            emulator: self.emulator - before.emulator,
            database: self.database - before.database,
            daemon: self.daemon - before.daemon,
            bench: self.bench - before.bench,
        }
    }

    pub(super) fn total(&self) -> f64 {
        self.emulator + self.database + self.daemon + self.bench
    }

    pub(super) fn render(&self, seconds: f64) -> String {
        let cores = |c: f64| c / seconds.max(1e-6);
        format!(
            "{:.1} s of CPU in {seconds:.1} s = {:.2} cores (emulator {:.1} s, database {:.1} s, daemon {:.1} s, bench {:.1} s)",
            self.total(),
            cores(self.total()),
            self.emulator,
            self.database,
            self.daemon,
            self.bench
        )
    }
}
