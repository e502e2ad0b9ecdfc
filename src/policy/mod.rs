//! Balancing policies: which idle server a request gets. One file per policy, all behind
//! [`Policy`], chosen in one place ([`by_name`]):
//!
//! - [`power`]: the fastest idle server by declared processing time, round robin among equals
//!   (the original project's rule, and the default).
//! - [`round_robin`]: the idle server chosen longest ago, ignoring power.

pub mod power;
pub mod round_robin;

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
}

/// A balancing policy.
pub trait Policy: Send + Sync {
    /// The name given to `--algorithm`.
    fn name(&self) -> &'static str;
    /// Index of the idle server to use; `None` only when `idle` is empty.
    fn pick(&self, idle: &[Candidate]) -> Option<usize>;
}

/// Every policy name `--algorithm` accepts.
pub const NAMES: [&str; 2] = ["power", "round-robin"];

/// The policy called `name`.
pub fn by_name(name: &str) -> Option<Box<dyn Policy>> {
    match name {
        "power" => Some(Box::new(power::Power)),
        "round-robin" => Some(Box::new(round_robin::RoundRobin)),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) fn candidate(id: u32, secs: f64, last_chosen: u64) -> Candidate {
    Candidate {
        id,
        processing_time: Duration::from_secs_f64(secs),
        last_chosen,
    }
}
