//! `least-connections`: the idle server that has been given the fewest requests. A minilb
//! server holds one request at a time, so every idle server has zero in flight; the count of
//! requests served so far is what tells them apart. Round robin among equals.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::Policy;
use crate::balancer::backend::Backend;

/// Idle server with the fewest requests served.
pub struct LeastConnections;

impl Policy for LeastConnections {
    fn name(&self) -> &'static str {
        "least-connections"
    }

    fn pick(&self, idle: &[Arc<Backend>]) -> Option<usize> {
        (0..idle.len()).min_by_key(|&i| {
            (
                idle[i].requests.load(Relaxed),
                idle[i].last_chosen.load(Relaxed),
            )
        })
    }

    fn reason(&self, chosen: &Backend) -> String {
        format!("fewest requests served ({})", chosen.requests.load(Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::backend;

    #[test]
    fn picks_the_least_served_whatever_its_power() {
        let busy_fast = backend(1, 0.1, 1);
        busy_fast.requests.store(10, Relaxed);
        let quiet_slow = backend(2, 2.0, 2);
        quiet_slow.requests.store(3, Relaxed);
        assert_eq!(LeastConnections.pick(&[busy_fast, quiet_slow]), Some(1));
    }
}
