//! Balancing policies: which idle server a request gets. One file per policy, all behind
//! [`Policy`], listed in one table ([`ALL`]) and chosen by name there ([`by_name`]):
//!
//! - [`power`]: the fastest idle server by declared processing time, round robin among equals
//!   (the original project's rule, and the default).
//! - [`measured`]: the same, ranked by the service time the balancer measured.
//! - [`round_robin`]: the idle server chosen longest ago, ignoring power.
//! - [`least_connections`]: the idle server that has served the fewest requests.
//! - [`two_choices`]: two idle servers at random, the less loaded of the two.
//!
//! A server takes one request at a time here, so every policy chooses among idle servers only;
//! what differs is the order in which it prefers them.

pub mod least_connections;
pub mod measured;
pub mod power;
pub mod round_robin;
pub mod two_choices;

use std::time::Duration;

/// What a policy may know about one idle server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// The server's id.
    pub id: u32,
    /// Its declared processing time (smaller is more powerful).
    pub processing_time: Duration,
    /// When it was last chosen, as a sequence number (0 = never); rotation uses this.
    pub last_chosen: u64,
    /// Requests it has been given since it joined.
    pub served: u64,
    /// Its service time as measured by the balancer (a moving average), once known.
    pub measured: Option<Duration>,
}

impl Candidate {
    /// A server that has not been chosen yet.
    pub fn new(id: u32, processing_time: Duration) -> Candidate {
        Candidate {
            id,
            processing_time,
            last_chosen: 0,
            served: 0,
            measured: None,
        }
    }

    /// The measured service time, or the declared one until a measurement exists.
    pub fn expected_time(&self) -> Duration {
        self.measured.unwrap_or(self.processing_time)
    }

    /// Folds one measured service time into the moving average (weight 1/5 for the new one).
    pub fn record_service(&mut self, took: Duration) {
        self.measured = Some(match self.measured {
            None => took,
            Some(old) => (old * 4 + took) / 5,
        });
    }
}

/// A balancing policy.
pub trait Policy: Send + Sync {
    /// The name given to `--algorithm`.
    fn name(&self) -> &'static str;
    /// Index of the idle server to use; `None` only when `idle` is empty.
    fn pick(&self, idle: &[Candidate]) -> Option<usize>;
    /// Why `chosen` was picked, for the log and the dashboard (e.g. `fastest idle (0.5 s)`).
    fn reason(&self, chosen: &Candidate) -> String;
}

/// Every policy, in the order `--algorithm` lists them. Policies keep no state of their own,
/// so one instance of each serves every balancer.
pub const ALL: [&dyn Policy; 5] = [
    &power::Power,
    &measured::Measured,
    &round_robin::RoundRobin,
    &least_connections::LeastConnections,
    &two_choices::TwoChoices,
];

/// Every policy name `--algorithm` accepts.
pub fn names() -> [&'static str; 5] {
    ALL.map(|p| p.name())
}

/// The policy called `name`.
pub fn by_name(name: &str) -> Option<&'static dyn Policy> {
    ALL.into_iter().find(|p| p.name() == name)
}

/// Seconds, short: `0.05 s`, `12 ms`.
pub fn short_time(d: Duration) -> String {
    if d >= Duration::from_secs(1) || d.is_zero() {
        format!("{} s", d.as_secs_f64())
    } else if d >= Duration::from_millis(10) {
        format!("{:.0} ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{:.2} ms", d.as_secs_f64() * 1000.0)
    }
}

#[cfg(test)]
pub(crate) fn candidate(id: u32, secs: f64, last_chosen: u64) -> Candidate {
    Candidate {
        last_chosen,
        ..Candidate::new(id, Duration::from_secs_f64(secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_builds_its_policy() {
        for name in names() {
            assert_eq!(by_name(name).unwrap().name(), name);
        }
        assert!(by_name("random").is_none());
    }

    #[test]
    fn measured_time_is_a_moving_average() {
        let mut c = candidate(1, 0.5, 0);
        assert_eq!(c.expected_time(), Duration::from_millis(500));
        c.record_service(Duration::from_millis(100));
        assert_eq!(c.expected_time(), Duration::from_millis(100));
        c.record_service(Duration::from_millis(600));
        assert_eq!(c.expected_time(), Duration::from_millis(200));
    }

    #[test]
    fn short_times() {
        assert_eq!(short_time(Duration::from_millis(500)), "500 ms");
        assert_eq!(short_time(Duration::from_secs(2)), "2 s");
        assert_eq!(short_time(Duration::from_micros(1500)), "1.50 ms");
        assert_eq!(short_time(Duration::ZERO), "0 s");
    }
}
