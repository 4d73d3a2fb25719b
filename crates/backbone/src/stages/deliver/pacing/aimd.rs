//! The adaptive concurrency limit of one target: additive increase while
//! answers come back within the latency the target has shown, multiplicative
//! decrease on back pressure (429, 503, a timeout) or a latency jump. The
//! shape is Vector's adaptive request concurrency: the limit is judged once
//! per round trip (a window as long as the mean RTT), against an EWMA of the
//! past windows' mean RTT and its deviation. Unlike Vector, back pressure
//! lowers the limit at once rather than at the window's end (docs/spec.md §4.2), at
//! most once per window so one burst of 429s does not collapse it to 1.
//!
//! A target with a hard cap (NetSuite's account limit) refuses at the same
//! level every time: probing it once per round trip would spend a refusal
//! every few windows and run below the cap after each one. So a refusal also
//! records a ceiling — one below the requests that were out when it came —
//! and the limit settles there instead of growing into the cap again. The
//! ceiling is trusted for [`CEILING_TRUST`]; after that the limit grows again
//! (the account's other users, or another replica, may have gone quiet), and
//! the next refusal sets it again: at the cap, one refusal every few seconds
//! (0.4 % of NetSuite's 50 requests/s), and a freed share of the account is
//! found within seconds, not a minute.
//!
//! Pure: the caller passes the clock, so the tests drive it exactly.

use std::time::Duration;

use tokio::time::Instant;

/// Vector's defaults, found by its simulations.
const DECREASE_RATIO: f64 = 0.9;
const EWMA_ALPHA: f64 = 0.4;
const RTT_DEVIATION_SCALE: f64 = 2.5;
/// A window is "within the latency the target has shown" (docs/spec.md §4.2)
/// when its mean RTT is no further above the target's mean than one
/// deviation, or this share of the mean while the deviation is still small.
/// Vector grows only on windows at or below the mean: with any jitter that
/// is every other window, and a ramp from 4 to NetSuite's 15 took ~8 s
/// instead of 11 round trips.
const USUAL_SPREAD: f64 = 0.05;
/// How long a ceiling learned from a refusal holds before it is probed.
/// Measured: with 60 s, a replica that shared NetSuite's 15 with a killed
/// one stayed at its half for the rest of the drain (21-25 of 50 requests/s
/// for 13 s).
pub const CEILING_TRUST: Duration = Duration::from_secs(5);

/// What a response did to the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Unchanged,
    Increased(usize),
    Decreased(usize),
}

#[derive(Debug, Clone)]
pub struct Aimd {
    limit: usize,
    max: usize,
    /// EWMA of past windows' mean RTT (seconds) and its variance.
    past: Option<(f64, f64)>,
    /// This window's RTTs.
    sum: f64,
    count: u32,
    window_end: Option<Instant>,
    /// Whether requests wanted more than the limit in this window: only
    /// then is there evidence for a higher one.
    reached_limit: bool,
    back_pressure: bool,
    decreased: bool,
    /// The highest limit a refusal left room for, and when it was learned.
    ceiling: Option<(usize, Instant)>,
}

impl Aimd {
    pub fn new(initial: usize, max: usize) -> Self {
        let max = max.max(1);
        Self {
            limit: initial.clamp(1, max),
            max,
            past: None,
            sum: 0.0,
            count: 0,
            window_end: None,
            reached_limit: false,
            back_pressure: false,
            decreased: false,
            ceiling: None,
        }
    }

    /// The ceiling learned from refusals, while it is trusted.
    pub fn ceiling(&self, now: Instant) -> Option<usize> {
        self.ceiling
            .filter(|(_, at)| now.saturating_duration_since(*at) < CEILING_TRUST)
            .map(|(c, _)| c)
    }

    /// The target refused for being over its limit with `inflight` requests
    /// out (this one included): back pressure, and a ceiling one below.
    /// Refusals within one window describe one level: the lowest counts.
    pub fn refused(&mut self, now: Instant, inflight: usize) -> Change {
        let level = inflight.saturating_sub(1).max(1);
        let same_window = self.decreased;
        self.ceiling = match self.ceiling {
            Some((c, at)) if same_window => Some((c.min(level), at)),
            _ => Some((level, now)),
        };
        let change = self.record(now, None, true);
        if self.limit > level {
            self.limit = level;
            return Change::Decreased(level);
        }
        change
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The mean RTT the target has shown, once it has shown one.
    pub fn mean_rtt(&self) -> Option<Duration> {
        self.past.map(|(m, _)| Duration::from_secs_f64(m))
    }

    /// A request starts with `inflight` requests (itself included) out.
    pub fn started(&mut self, inflight: usize) {
        if inflight >= self.limit {
            self.reached_limit = true;
        }
    }

    /// Restarts the limit (after an outage): the RTT history is kept.
    pub fn reset(&mut self, initial: usize) {
        self.limit = initial.clamp(1, self.max);
        self.start_window(None);
    }

    /// A response came back after `rtt`; `back_pressure` for 429, 503, a
    /// timeout or a refused connection; `rtt` is only judged for successes.
    pub fn record(&mut self, now: Instant, rtt: Option<Duration>, back_pressure: bool) -> Change {
        let mut change = Change::Unchanged;
        if let Some(rtt) = rtt {
            self.sum += rtt.as_secs_f64();
            self.count += 1;
        }
        // A window that has ended is judged with this answer's RTT; its back
        // pressure counts in the next window.
        if let (Some((mean, var)), Some(end)) = (self.past, self.window_end) {
            if now >= end {
                change = self.judge_window(now, mean, var);
            }
        }
        if back_pressure {
            self.back_pressure = true;
            if !self.decreased {
                change = self.decrease();
            }
        }
        if self.window_end.is_none() && self.count > 0 {
            // The first measurement sets the baseline and the window; after
            // a reset the baseline is kept and the first answer starts one.
            let c = match self.past {
                Some((mean, _)) => mean,
                None => self.sum / f64::from(self.count),
            };
            self.past.get_or_insert((c, 0.0));
            self.start_window(Some(now + Duration::from_secs_f64(c)));
        }
        change
    }

    fn judge_window(&mut self, now: Instant, mean: f64, var: f64) -> Change {
        let mut change = Change::Unchanged;
        let current = (self.count > 0).then(|| self.sum / f64::from(self.count));
        // A jump must be clear of noise: 2.5 deviations, and a quarter of
        // the mean while the deviation is still unknown.
        let threshold = (var.sqrt() * RTT_DEVIATION_SCALE).max(mean * 0.25);
        let cap = self.ceiling(now).map_or(self.max, |c| c.min(self.max));
        let usual = var.sqrt().max(mean * USUAL_SPREAD);
        if self.limit < cap
            && self.reached_limit
            && !self.back_pressure
            && current.is_some_and(|c| c <= mean + usual)
        {
            self.limit += 1;
            change = Change::Increased(self.limit);
        } else if !self.decreased && current.is_some_and(|c| c >= mean + threshold) {
            // A latency jump: the target is queueing our requests.
            change = self.decrease();
        }
        let (mean, var) = match current {
            Some(c) => {
                let diff = c - mean;
                let incr = EWMA_ALPHA * diff;
                (mean + incr, (1.0 - EWMA_ALPHA) * (var + diff * incr))
            }
            None => (mean, var),
        };
        self.past = Some((mean, var));
        self.start_window(Some(now + Duration::from_secs_f64(mean)));
        change
    }

    fn decrease(&mut self) -> Change {
        self.decreased = true;
        if self.limit <= 1 {
            return Change::Unchanged;
        }
        let next = ((self.limit as f64) * DECREASE_RATIO) as usize;
        self.limit = next.clamp(1, self.limit - 1);
        Change::Decreased(self.limit)
    }

    fn start_window(&mut self, end: Option<Instant>) {
        self.sum = 0.0;
        self.count = 0;
        self.window_end = end;
        self.reached_limit = false;
        self.back_pressure = false;
        self.decreased = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    /// 1/64 s: sums of it are exact in binary, so "as fast as before" is exact.
    const RTT: Duration = Duration::from_micros(15_625);

    /// Runs `rounds` windows of answers taking `rtt`, always wanting more
    /// than the limit; returns the limit after each window.
    fn run(a: &mut Aimd, t: &mut Instant, rounds: usize, rtt: Duration, bp: bool) -> Vec<usize> {
        let mut out = Vec::new();
        for _ in 0..rounds {
            let n = a.limit();
            for _ in 0..n {
                a.started(n);
            }
            *t += rtt;
            for _ in 0..n {
                a.record(*t, (!bp).then_some(rtt), bp);
            }
            out.push(a.limit());
        }
        out
    }

    #[test]
    fn steady_quick_answers_grow_the_limit_by_one_per_round_trip_up_to_the_max() {
        let mut a = Aimd::new(4, 8);
        let mut t = Instant::now();
        let limits = run(&mut a, &mut t, 10, RTT, false);
        // The first window only measures; then +1 per window, capped.
        assert_eq!(limits, vec![4, 5, 6, 7, 8, 8, 8, 8, 8, 8]);
    }

    /// One window per entry of `rtts`, a round of answers taking that long
    /// arriving every `every` (longer than any, so each round ends the
    /// window before it); returns the limit after each.
    fn windows(a: &mut Aimd, t: &mut Instant, rtts: &[Duration], every: Duration) -> Vec<usize> {
        let mut out = Vec::new();
        for rtt in rtts {
            let n = a.limit();
            for _ in 0..n {
                a.started(n);
            }
            *t += every;
            for _ in 0..n {
                a.record(*t, Some(*rtt), false);
            }
            out.push(a.limit());
        }
        out
    }

    /// Windows alternately 3 % faster and 3 % slower than the target's
    /// 300 ms: answers as fast as it has shown, and every window grows the
    /// limit. Vector's rule (at or below the mean) grew it on every other
    /// one: [4, 5, 5, 6, 6, 7, 7, …].
    #[test]
    fn answers_jittering_around_the_mean_grow_the_limit_every_round_trip() {
        let mut a = Aimd::new(4, 64);
        let mut t = Instant::now();
        let rtts: Vec<Duration> = (0..12)
            .map(|i| if i % 2 == 0 { 291 * MS } else { 309 * MS })
            .collect();
        let limits = windows(&mut a, &mut t, &rtts, 400 * MS);
        assert_eq!(limits, (4..16).collect::<Vec<_>>());
    }

    /// Clearly slower than the target has shown, short of a jump: no growth,
    /// no fall.
    #[test]
    fn a_window_slower_than_usual_holds_the_limit() {
        let mut a = Aimd::new(4, 64);
        let mut t = Instant::now();
        let steady = windows(&mut a, &mut t, &[300 * MS; 3], 400 * MS);
        assert_eq!(steady, vec![4, 5, 6]);
        // The window judged at an answer holds the answers before it.
        let slower = windows(&mut a, &mut t, &[330 * MS; 2], 400 * MS);
        assert_eq!(slower, vec![7, 7]);
    }

    #[test]
    fn after_a_reset_the_limit_grows_again() {
        let mut a = Aimd::new(4, 64);
        let mut t = Instant::now();
        assert_eq!(run(&mut a, &mut t, 3, RTT, false), vec![4, 5, 6]);
        a.reset(4);
        t += RTT;
        // The first answer after the reset starts a window (the RTT history
        // is kept); before, no window was ever judged again and the limit
        // stayed at its initial value for good.
        assert_eq!(run(&mut a, &mut t, 4, RTT, false), vec![4, 5, 6, 7]);
    }

    #[test]
    fn back_pressure_lowers_at_once_and_only_once_per_window() {
        let mut a = Aimd::new(20, 64);
        let t = Instant::now();
        assert_eq!(
            a.record(t, Some(40 * MS), false),
            Change::Unchanged,
            "baseline"
        );
        // Twenty 429s in one window: one decrease, not twenty.
        let mut changes = Vec::new();
        for _ in 0..20 {
            changes.push(a.record(t + MS, None, true));
        }
        assert_eq!(changes[0], Change::Decreased(18));
        assert!(changes[1..].iter().all(|c| *c == Change::Unchanged));
        // The next window may lower it again.
        let later = t + 100 * MS;
        assert_eq!(a.record(later, None, true), Change::Decreased(16));
        assert_eq!(a.limit(), 16);
    }

    #[test]
    fn the_limit_never_falls_below_one() {
        let mut a = Aimd::new(2, 64);
        let mut t = Instant::now();
        a.record(t, Some(10 * MS), false);
        for _ in 0..10 {
            t += 50 * MS;
            a.record(t, None, true);
        }
        assert_eq!(a.limit(), 1);
    }

    #[test]
    fn a_latency_jump_lowers_the_limit() {
        let mut a = Aimd::new(10, 64);
        let mut t = Instant::now();
        // Stable 40 ms without reaching the limit: no growth, a tight baseline.
        for _ in 0..10 {
            t += 40 * MS;
            a.record(t, Some(40 * MS), false);
        }
        assert_eq!(a.limit(), 10);
        t += 400 * MS;
        a.record(t, Some(400 * MS), false);
        assert_eq!(a.limit(), 9, "ten times slower answers are back pressure");
    }

    #[test]
    fn no_growth_without_demand() {
        let mut a = Aimd::new(4, 64);
        let mut t = Instant::now();
        for _ in 0..20 {
            t += 10 * MS;
            a.started(1);
            a.record(t, Some(10 * MS), false);
        }
        assert_eq!(
            a.limit(),
            4,
            "one request at a time is no evidence for more"
        );
    }

    /// A target that refuses above `cap` in flight, answering in `rtt`;
    /// deliveries always want more. Returns (refusals, mean limit).
    fn against_a_cap(a: &mut Aimd, t: &mut Instant, windows: usize, cap: usize) -> (usize, f64) {
        let mut refusals = 0;
        let mut sum = 0;
        for _ in 0..windows {
            let n = a.limit();
            sum += n;
            for i in 1..=n {
                a.started(i);
            }
            *t += RTT;
            for i in (1..=n).rev() {
                if i > cap {
                    refusals += 1;
                    a.refused(*t, i);
                } else {
                    a.record(*t, Some(RTT), false);
                }
            }
        }
        (refusals, sum as f64 / windows as f64)
    }

    #[test]
    fn a_known_cap_is_not_probed_while_the_ceiling_is_trusted() {
        let mut a = Aimd::new(4, 64);
        let mut t = Instant::now();
        // 64 windows of 1/64 s: one second, well within the trust.
        let (refusals, _) = against_a_cap(&mut a, &mut t, 64, 15);
        assert_eq!(refusals, 1, "one refusal finds the cap");
        assert_eq!(a.limit(), 15, "settles at the cap, not below");
        assert_eq!(a.ceiling(t), Some(15));
        let (refusals, mean) = against_a_cap(&mut a, &mut t, 192, 15);
        assert_eq!(refusals, 0, "three more seconds: never probed");
        assert!((mean - 15.0).abs() < f64::EPSILON, "mean limit {mean}");
    }

    #[test]
    fn the_ceiling_is_probed_again_after_its_trust() {
        let mut a = Aimd::new(15, 64);
        let mut t = Instant::now();
        against_a_cap(&mut a, &mut t, 64, 15);
        assert_eq!(a.ceiling(t), Some(15));
        // The account's other users went quiet: the cap is now 20.
        t += CEILING_TRUST;
        assert_eq!(a.ceiling(t), None);
        let (refusals, _) = against_a_cap(&mut a, &mut t, 64, 20);
        assert_eq!(refusals, 1);
        assert_eq!(a.limit(), 20);
        assert_eq!(a.ceiling(t), Some(20));
    }

    #[test]
    fn refusals_of_one_window_keep_the_lowest_level() {
        let mut a = Aimd::new(20, 64);
        let t = Instant::now();
        a.record(t, Some(40 * MS), false);
        assert_eq!(a.refused(t + MS, 18), Change::Decreased(17));
        a.refused(t + MS, 12);
        assert_eq!(a.ceiling(t + MS), Some(11));
        assert_eq!(a.limit(), 11);
    }

    #[test]
    fn reset_restarts_from_the_initial_limit() {
        let mut a = Aimd::new(4, 64);
        let mut t = Instant::now();
        run(&mut a, &mut t, 6, RTT, false);
        assert!(a.limit() > 4);
        a.reset(4);
        assert_eq!(a.limit(), 4);
        assert!(a.mean_rtt().is_some(), "the RTT history is kept");
    }
}
