//! `least-connections`: the server with a free worker that has the fewest requests in flight;
//! among those, the one that has served the fewest (with one worker each, every idle server
//! has none in flight, so this is what tells them apart). Round robin among equals.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::{Facts, Policy};
use crate::balancer::backend::Backend;

/// Idle server with the fewest requests in flight, then served.
pub struct LeastConnections;

impl Policy for LeastConnections {
    fn name(&self) -> &'static str {
        "least-connections"
    }

    fn pick(&self, idle: &[Arc<Backend>]) -> Option<usize> {
        (0..idle.len()).min_by_key(|&i| {
            (
                idle[i].in_flight.load(Relaxed),
                idle[i].requests.load(Relaxed),
                idle[i].last_chosen.load(Relaxed),
            )
        })
    }

    fn reason(&self, chosen: &Facts) -> String {
        let (before, served) = (chosen.in_flight, chosen.served);
        format!("fewest in flight ({before}), then fewest requests served ({served})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::backend;

    #[test]
    fn picks_the_fewest_in_flight_then_the_least_served() {
        let (busy, quiet) = (backend(1, 0.1, 0), backend(2, 0.1, 0));
        busy.in_flight.store(2, Relaxed);
        quiet.in_flight.store(1, Relaxed);
        quiet.requests.store(99, Relaxed);
        assert_eq!(LeastConnections.pick(&[busy, quiet]), Some(1));
    }

    #[test]
    fn picks_the_least_served_whatever_its_power() {
        let busy_fast = backend(1, 0.1, 1);
        busy_fast.requests.store(10, Relaxed);
        let quiet_slow = backend(2, 2.0, 2);
        quiet_slow.requests.store(3, Relaxed);
        assert_eq!(LeastConnections.pick(&[busy_fast, quiet_slow]), Some(1));
    }
}
