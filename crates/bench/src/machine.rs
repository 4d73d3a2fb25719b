//! What the machine was doing around a bench: the load average, the other
//! processes busy on the CPU (over one second, from /proc; not this process
//! nor its children) and the Pub/Sub emulator's thread count, at start and
//! end, with a warning when it was not quiet. Every figure of this project
//! is a ratio measured on a small shared machine: a figure from a noisy run
//! must not pass for a real one. Linux only; elsewhere it says nothing.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::time::Duration;

/// How long the other processes' CPU use is sampled.
const WINDOW: Duration = Duration::from_secs(1);
/// A process using more than this share of one core is listed as busy.
const BUSY: f64 = 0.10;
/// Other processes using more than this, in cores, make the machine noisy.
const NOISY_CORES: f64 = 0.25;
/// A load average above this share of the cores makes the start noisy.
const NOISY_LOAD_PER_CORE: f64 = 0.5;
/// An emulator with more threads than this has piled something up (each
/// open streaming pull and each ordered backlog key holds one).
const EMULATOR_THREADS: usize = 300;
/// Linux's USER_HZ: /proc counts CPU time in 1/100 s.
const TICKS_PER_S: f64 = 100.0;

/// One process as /proc/<pid>/stat shows it.
#[derive(Debug, Clone, PartialEq)]
struct Stat {
    name: String,
    ppid: u32,
    /// utime + stime, in ticks.
    ticks: u64,
}

/// Parses a /proc/<pid>/stat line.
fn parse_stat(line: &str) -> Option<Stat> {
    // The name (field 2) is in parentheses and may hold spaces or ')'.
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let name = line.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = line.get(close + 1..)?.split_whitespace().collect();
    // `rest` starts at field 3 (state); ppid is 4, utime 14, stime 15.
    let field = |n: usize| rest.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(Stat {
        name,
        ppid: u32::try_from(field(4)?).ok()?,
        ticks: field(14)? + field(15)?,
    })
}

fn processes() -> HashMap<u32, Stat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let line = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            Some((pid, parse_stat(&line)?))
        })
        .collect()
}

/// `root` and every process descending from it.
fn family(root: u32, procs: &HashMap<u32, Stat>) -> HashSet<u32> {
    let mut ours = HashSet::from([root]);
    loop {
        let before = ours.len();
        for (pid, s) in procs {
            if ours.contains(&s.ppid) {
                ours.insert(*pid);
            }
        }
        if ours.len() == before {
            return ours;
        }
    }
}

/// A process other than the bench that used the CPU during the window.
#[derive(Debug, Clone, PartialEq)]
pub struct Busy {
    pub pid: u32,
    pub name: String,
    /// Cores used on average over the window.
    pub cores: f64,
}

/// The processes outside `ours` that used more than [`BUSY`] of a core
/// between the two readings, busiest first.
fn busy_between(
    before: &HashMap<u32, Stat>,
    after: &HashMap<u32, Stat>,
    ours: &HashSet<u32>,
    seconds: f64,
) -> Vec<Busy> {
    let mut busy: Vec<Busy> = after
        .iter()
        .filter(|(pid, _)| !ours.contains(pid))
        .filter_map(|(pid, a)| {
            // A process born during the window counts from zero.
            let b = before.get(pid).map_or(0, |b| b.ticks);
            let cores = a.ticks.saturating_sub(b) as f64 / TICKS_PER_S / seconds.max(1e-3);
            (cores > BUSY).then(|| Busy {
                pid: *pid,
                name: a.name.clone(),
                cores,
            })
        })
        .collect();
    busy.sort_by(|a, b| b.cores.total_cmp(&a.cores));
    busy
}

/// The emulator this bench talks to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Emulator {
    pub pid: u32,
    pub threads: usize,
}

/// What the machine was doing at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    /// 1, 5 and 15 minute load averages.
    pub load: [f64; 3],
    pub cores: usize,
    /// Other processes busy during the window, busiest first.
    pub busy: Vec<Busy>,
    pub emulator: Option<Emulator>,
}

/// Start or end of a bench: what counts as noise differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Start,
    End,
}

impl When {
    fn as_str(self) -> &'static str {
        match self {
            When::Start => "start",
            When::End => "end",
        }
    }
}

impl Machine {
    /// Reads the machine over [`WINDOW`]; `emulator_host` is the bench's
    /// `PUBSUB_EMULATOR_HOST`, whose local listener is the emulator.
    pub async fn observe(emulator_host: Option<&str>) -> Machine {
        let me = std::process::id();
        let before = processes();
        let started = tokio::time::Instant::now();
        tokio::time::sleep(WINDOW).await;
        let after = processes();
        let seconds = started.elapsed().as_secs_f64();
        let ours = family(me, &after);
        Machine {
            load: load_average().unwrap_or_default(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            busy: busy_between(&before, &after, &ours, seconds),
            emulator: emulator_host
                .and_then(local_port)
                .and_then(listener_pid)
                .map(|pid| Emulator {
                    pid,
                    threads: threads(pid),
                }),
        }
    }

    /// Why this reading was not quiet (empty: it was). At the end, the
    /// bench's own emulator may still be finishing its work: it is shown,
    /// not held against the run.
    pub fn noise(&self, when: When) -> Vec<String> {
        let mut why = Vec::new();
        let skip = match when {
            When::End => self.emulator.map(|e| e.pid),
            When::Start => None,
        };
        let others: f64 = self
            .busy
            .iter()
            .filter(|b| Some(b.pid) != skip)
            .map(|b| b.cores)
            .sum();
        if others > NOISY_CORES {
            why.push(format!(
                "other processes used {others:.2} cores at the {}",
                when.as_str()
            ));
        }
        if when == When::Start && self.load[0] > self.cores as f64 * NOISY_LOAD_PER_CORE {
            why.push(format!(
                "the load average was {:.2} on {} cores at the start",
                self.load[0], self.cores
            ));
        }
        if let Some(e) = self.emulator.filter(|e| e.threads > EMULATOR_THREADS) {
            why.push(format!(
                "the Pub/Sub emulator (pid {}) had {} threads at the {} (restart it: scripts/services.sh stop, then start)",
                e.pid,
                e.threads,
                when.as_str()
            ));
        }
        why
    }

    /// One paragraph: load, busy processes, the emulator.
    pub fn render(&self, when: When) -> String {
        let mut s = format!(
            "machine at the {}: load average {:.2} {:.2} {:.2} on {} cores",
            when.as_str(),
            self.load[0],
            self.load[1],
            self.load[2],
            self.cores
        );
        if let Some(e) = self.emulator {
            let _ = write!(s, "; emulator pid {} with {} threads", e.pid, e.threads);
        }
        if self.busy.is_empty() {
            s.push_str("; no other process busy");
        } else {
            s.push_str("; busy besides this bench:");
            for b in self.busy.iter().take(5) {
                let _ = write!(s, " {} (pid {}) {:.2} cores,", b.name, b.pid, b.cores);
            }
            s.pop();
        }
        s
    }
}

/// Prints the reading (to stdout for a bench that prints text, else to
/// stderr so a JSON report stays one document); returns its noise.
pub fn report(m: &Machine, when: When, to_stdout: bool) -> Vec<String> {
    let line = m.render(when);
    if to_stdout {
        println!("{line}");
    } else {
        eprintln!("{line}");
    }
    m.noise(when)
}

/// Says, once, that the figures come from a noisy machine.
pub fn warn_if_noisy(noise: &[String]) {
    if noise.is_empty() {
        return;
    }
    eprintln!(
        "warning: the machine was not quiet during this bench ({}); do not compare its figures with a quiet run's",
        noise.join("; ")
    );
}

fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

/// The port of a `host:port` naming this machine.
fn local_port(host: &str) -> Option<u16> {
    let host = host
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    let (name, port) = host.rsplit_once(':')?;
    matches!(name, "127.0.0.1" | "localhost" | "[::1]")
        .then(|| port.trim_end_matches('/').parse().ok())
        .flatten()
}

/// The process listening on TCP `port`, from /proc/net/tcp{,6} and the
/// processes' file descriptors.
fn listener_pid(port: u16) -> Option<u32> {
    let want = format!(":{port:04X}");
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| t.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // local_address, state 0A = LISTEN, inode.
            (f.get(1)?.ends_with(&want) && *f.get(3)? == "0A")
                .then(|| f.get(9).map(|s| s.to_string()))?
        })?;
    let target = format!("socket:[{inode}]");
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                fds.filter_map(Result::ok).any(|fd| {
                    std::fs::read_link(fd.path()).is_ok_and(|l| l.to_str() == Some(target.as_str()))
                })
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(name: &str, ppid: u32, ticks: u64) -> Stat {
        Stat {
            name: name.into(),
            ppid,
            ticks,
        }
    }

    #[test]
    fn parses_a_stat_line_whose_name_holds_spaces_and_parens() {
        let line = "4242 (Web Content (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 30 0 1234 0 0";
        assert_eq!(parse_stat(line), Some(stat("Web Content (x)", 1, 300)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn busy_lists_others_above_a_tenth_of_a_core_busiest_first() {
        let before = HashMap::from([
            (1, stat("init", 0, 0)),
            (10, stat("bench", 1, 0)),
            (11, stat("daemon", 10, 0)),
            (20, stat("java", 1, 100)),
            (30, stat("cargo", 1, 0)),
            (40, stat("idle", 1, 0)),
        ]);
        let after = HashMap::from([
            (1, stat("init", 0, 0)),
            (10, stat("bench", 1, 200)),
            (11, stat("daemon", 10, 200)),
            (20, stat("java", 1, 135)),
            (30, stat("cargo", 1, 90)),
            (40, stat("idle", 1, 5)),
            // Born during the window.
            (50, stat("rustc", 30, 40)),
        ]);
        let ours = family(10, &after);
        assert_eq!(ours, HashSet::from([10, 11]));
        let busy = busy_between(&before, &after, &ours, 1.0);
        let names: Vec<_> = busy.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["cargo", "rustc", "java"]);
        assert!((busy[0].cores - 0.9).abs() < 1e-9);
    }

    fn machine(load: f64, busy: &[(u32, f64)], emulator: Option<(u32, usize)>) -> Machine {
        Machine {
            load: [load, load, load],
            cores: 2,
            busy: busy
                .iter()
                .map(|&(pid, cores)| Busy {
                    pid,
                    name: format!("p{pid}"),
                    cores,
                })
                .collect(),
            emulator: emulator.map(|(pid, threads)| Emulator { pid, threads }),
        }
    }

    #[test]
    fn a_quiet_machine_has_no_noise() {
        let m = machine(0.3, &[(7, 0.12)], Some((9, 30)));
        assert!(m.noise(When::Start).is_empty());
        assert!(m.noise(When::End).is_empty());
        assert!(m.render(When::Start).contains("p7 (pid 7) 0.12 cores"));
    }

    #[test]
    fn busy_neighbours_a_high_load_or_a_swollen_emulator_are_noise() {
        let busy = machine(0.3, &[(7, 0.2), (8, 0.2)], None);
        assert_eq!(
            busy.noise(When::Start).len(),
            1,
            "{:?}",
            busy.noise(When::Start)
        );
        let loaded = machine(1.5, &[], None);
        assert_eq!(loaded.noise(When::Start).len(), 1);
        // The load average at the end is the bench's own.
        assert!(loaded.noise(When::End).is_empty());
        let swollen = machine(0.1, &[], Some((9, 4303)));
        assert!(swollen.noise(When::Start)[0].contains("4303 threads"));
    }

    #[test]
    fn the_emulator_finishing_its_work_at_the_end_is_not_noise() {
        let m = machine(0.1, &[(9, 0.8)], Some((9, 40)));
        assert!(m.noise(When::End).is_empty());
        assert_eq!(m.noise(When::Start).len(), 1);
    }

    #[test]
    fn local_port_takes_hosts_of_this_machine_only() {
        assert_eq!(local_port("127.0.0.1:8095"), Some(8095));
        assert_eq!(local_port("http://localhost:4443/"), Some(4443));
        assert_eq!(local_port("pubsub.example.com:443"), None);
    }
}
