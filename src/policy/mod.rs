//! Balancing policies: which idle server a request gets. One file per policy, all behind
//! [`Policy`], listed in one table ([`ALL`]) and chosen by name there ([`by_name`]):
//!
//! - [`power`]: the fastest idle server by declared processing time, round robin among equals
//!   (the original project's rule, and the default).
//! - [`measured`]: the same, ranked by the service time the balancer measured.
//! - [`round_robin`]: the idle server chosen longest ago, ignoring power.
//! - [`least_connections`]: the idle server with the fewest requests in flight, then served.
//! - [`two_choices`]: two idle servers at random, the less loaded of the two.
//!
//! A server takes as many requests at a time as it has workers, so every policy chooses among
//! *idle* servers only, those with a free worker; what differs is the order it prefers them in.

pub mod least_connections;
pub mod measured;
pub mod power;
pub mod round_robin;
pub mod two_choices;

use std::sync::Arc;
use std::time::Duration;

use crate::balancer::backend::Backend;

/// A balancing policy.
pub trait Policy: Send + Sync {
    /// The name given to `--algorithm`.
    fn name(&self) -> &'static str;
    /// Index of the idle server to use; `None` only when `idle` is empty. Called under the idle
    /// queue's lock: it reads the servers' live state and decides, nothing more.
    fn pick(&self, idle: &[Arc<Backend>]) -> Option<usize>;
    /// Why the server with these figures was picked, in words, for the log and the dashboard
    /// (e.g. `fastest idle (0.5 s)`); called outside any lock, only when someone reads it.
    fn reason(&self, chosen: &Facts) -> String;
}

/// The figures of a chosen server that policies' reasons quote, read when the choice is made
/// (they change with later requests) and put into words only when read: no allocation on the
/// request's path.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts {
    /// Declared processing time.
    pub declared: Duration,
    /// Measured service time, once there is one.
    pub measured: Option<Duration>,
    /// Requests in flight on it besides this one.
    pub in_flight: usize,
    /// Requests it had served.
    pub served: u64,
}

impl Facts {
    /// The figures of `chosen`, just handed out (so its `in_flight` counts this request).
    pub fn of(chosen: &Backend) -> Facts {
        use std::sync::atomic::Ordering::Relaxed;
        Facts {
            declared: chosen.processing_time,
            measured: chosen.measured(),
            in_flight: chosen.in_flight.load(Relaxed).saturating_sub(1),
            served: chosen.requests.load(Relaxed),
        }
    }
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

/// A hand-built server of `secs` per request, last chosen at `last_chosen`.
#[cfg(test)]
pub(crate) fn backend(id: u32, secs: f64, last_chosen: u64) -> Arc<Backend> {
    let addr = format!("127.0.0.1:{}", 5000 + id);
    let b = Backend::new(id, addr, Duration::from_secs_f64(secs), false);
    b.last_chosen
        .store(last_chosen, std::sync::atomic::Ordering::Relaxed);
    Arc::new(b)
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
    fn short_times() {
        assert_eq!(short_time(Duration::from_millis(500)), "500 ms");
        assert_eq!(short_time(Duration::from_secs(2)), "2 s");
        assert_eq!(short_time(Duration::from_micros(1500)), "1.50 ms");
        assert_eq!(short_time(Duration::ZERO), "0 s");
    }
}
