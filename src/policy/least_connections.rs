//! `least-connections`: the idle server with the fewest requests in flight, then served (with
//! one worker each, every idle server has none in flight: served is what tells them apart).

use super::{load, min_by, Policy};

pub(crate) const LEAST_CONNECTIONS: Policy = Policy {
    name: "least-connections",
    pick: |idle| min_by(idle, load),
    reason: |d| {
        let (before, served) = (d.in_flight, d.served);
        format!("fewest in flight ({before}), then fewest requests served ({served})")
    },
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::backend;
    use std::sync::atomic::Ordering::Relaxed;

    fn pick(idle: &[std::sync::Arc<crate::balancer::backend::Backend>]) -> Option<usize> {
        (LEAST_CONNECTIONS.pick)(idle)
    }

    #[test]
    fn picks_the_fewest_in_flight_then_the_least_served() {
        let (busy, quiet) = (backend(1, 0.1, 0), backend(2, 0.1, 0));
        busy.in_flight.store(2, Relaxed);
        quiet.in_flight.store(1, Relaxed);
        quiet.requests.store(99, Relaxed);
        assert_eq!(pick(&[busy, quiet]), Some(1));
    }

    #[test]
    fn picks_the_least_served_whatever_its_power() {
        let busy_fast = backend(1, 0.1, 1);
        busy_fast.requests.store(10, Relaxed);
        let quiet_slow = backend(2, 2.0, 2);
        quiet_slow.requests.store(3, Relaxed);
        assert_eq!(pick(&[busy_fast, quiet_slow]), Some(1));
    }
}
