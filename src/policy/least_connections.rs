//! `least-connections`: the idle server that has been given the fewest requests. A minilb
//! server holds one request at a time, so every idle server has zero in flight; the count of
//! requests served so far is what tells them apart. Round robin among equals.

use super::{Candidate, Policy};

/// Idle server with the fewest requests served.
pub struct LeastConnections;

impl Policy for LeastConnections {
    fn name(&self) -> &'static str {
        "least-connections"
    }

    fn pick(&self, idle: &[Candidate]) -> Option<usize> {
        (0..idle.len()).min_by_key(|&i| (idle[i].served, idle[i].last_chosen))
    }

    fn reason(&self, chosen: &Candidate) -> String {
        format!("fewest requests served ({})", chosen.served)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::candidate;

    #[test]
    fn picks_the_least_served_whatever_its_power() {
        let mut busy_fast = candidate(1, 0.1, 1);
        busy_fast.served = 10;
        let mut quiet_slow = candidate(2, 2.0, 2);
        quiet_slow.served = 3;
        assert_eq!(LeastConnections.pick(&[busy_fast, quiet_slow]), Some(1));
    }
}
