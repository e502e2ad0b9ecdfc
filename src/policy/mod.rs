//! Balancing policies: which idle server a request gets, and why, in words. One file per
//! policy, each filling the same small table of operations ([`Policy`]: name, rule, reason, as
//! HAProxy's `lb_*.c` fill `struct lb_ops`), chosen in one place ([`ALL`]):
//!
//! - `power`: the fastest idle server as declared (the original's rule, and the default);
//! - `measured`: the fastest idle server as measured;
//! - `round-robin`: the idle server chosen longest ago;
//! - `least-connections`: the idle server with the fewest requests in flight, then served;
//! - `two-choices`: the less loaded of two idle servers at random.
//!
//! A server takes as many requests at a time as it has workers, so every policy chooses among
//! *idle* servers only, those with a free worker; ties go to the one chosen longest ago.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crate::balancer::backend::Backend;
use least_connections::LEAST_CONNECTIONS;
use measured::MEASURED;
use power::POWER;
use round_robin::ROUND_ROBIN;
use two_choices::TWO_CHOICES;

mod least_connections;
mod measured;
mod power;
mod round_robin;
mod two_choices;

/// A balancing policy's operations. Policies keep no state: one of each serves every balancer.
pub struct Policy {
    /// The name given to `--policy`.
    pub name: &'static str,
    /// Index of the idle server to use; `None` only when `idle` is empty. Called under the idle
    /// queue's lock: it reads the servers' live state and decides, nothing more.
    pub pick: fn(&[Arc<Backend>]) -> Option<usize>,
    /// Why the server was picked, from the figures in the decision; called outside any lock.
    reason: fn(&Decision) -> String,
}

/// Every policy, in the order `--policy` lists them: the one place a policy is chosen.
pub const ALL: [Policy; 5] = [POWER, MEASURED, ROUND_ROBIN, LEAST_CONNECTIONS, TWO_CHOICES];

/// Index of the server with the smallest `key`.
fn min_by<K: Ord>(idle: &[Arc<Backend>], key: impl Fn(&Backend) -> K) -> Option<usize> {
    (0..idle.len()).min_by_key(|&i| key(&idle[i]))
}

/// A server's load: requests in flight, then served, then when last chosen.
fn load(b: &Backend) -> (usize, u64, u64) {
    let r = |n: &std::sync::atomic::AtomicU64| n.load(Relaxed);
    (b.in_flight.load(Relaxed), r(&b.requests), r(&b.last_chosen))
}

/// The policy called `name`.
pub fn by_name(name: &str) -> Option<&'static Policy> {
    ALL.iter().find(|p| p.name == name)
}

/// The facts of one choice, read by the idle queue as it hands the server out (later requests
/// change them) and put into words only when read: nothing is formatted on a request's path.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Decision {
    /// Free workers at that moment, the chosen one included.
    pub free: usize,
    /// Servers in the pool with every worker busy.
    pub busy: usize,
    /// Place in line when the request started waiting (1 = first); `None` if it did not wait.
    pub position: Option<usize>,
    /// How long the request waited in line.
    pub waited: Duration,
    /// The chosen server's declared processing time, and its measured one if any.
    pub declared: Duration,
    pub measured: Option<Duration>,
    /// Requests in flight on it besides this one, and requests it had served.
    pub in_flight: usize,
    pub served: u64,
}

impl Policy {
    /// Why `chosen` was picked, in words, e.g. `1 server busy, server 2 fastest idle (20 ms)
    /// by power, queued 2nd, waited 15 ms`.
    pub fn explain(&self, chosen: u32, d: &Decision) -> String {
        let mut parts = Vec::new();
        if d.busy > 0 {
            parts.push(format!("{} busy", how_many(d.busy, "server")));
        }
        parts.push(format!("server {chosen} {} by {}", (self.reason)(d), self.name));
        if d.free > 1 {
            parts.push(format!("{} free too", how_many(d.free - 1, "worker")));
        }
        if let Some(place) = d.position {
            parts.push(format!("queued {}, waited {} ms", ordinal(place), d.waited.as_millis()));
        }
        parts.join(", ")
    }
}

/// `1 server`, `2 servers`.
fn how_many(n: usize, thing: &str) -> String {
    let s = if n == 1 { "" } else { "s" };
    format!("{n} {thing}{s}")
}

fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// Seconds, short: `0.05 s`, `12 ms`.
fn short_time(d: Duration) -> String {
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
    b.last_chosen.store(last_chosen, Relaxed);
    Arc::new(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_builds_its_policy() {
        for name in ALL.map(|p| p.name) {
            assert_eq!(by_name(name).unwrap().name, name);
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

    #[test]
    fn decisions_read_like_sentences() {
        let power = by_name("power").unwrap();
        let d = Decision {
            free: 2,
            busy: 2,
            position: Some(2),
            waited: Duration::from_millis(15),
            declared: Duration::from_millis(20),
            ..Decision::default()
        };
        assert_eq!(
            power.explain(2, &d),
            "2 servers busy, server 2 fastest idle (20 ms) by power, 1 worker free too, queued 2nd, waited 15 ms"
        );
        let alone =
            Decision { free: 1, declared: Duration::from_millis(20), ..Decision::default() };
        assert_eq!(power.explain(2, &alone), "server 2 fastest idle (20 ms) by power");
        assert_eq!(
            [1, 2, 3, 4, 11, 12, 13, 21, 22, 101].map(ordinal),
            ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st"]
        );
    }
}
