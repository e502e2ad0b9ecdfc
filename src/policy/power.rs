//! `power`: the fastest idle server by declared processing time (the original project's rule,
//! and the default); among equals, the one chosen longest ago.

use std::sync::atomic::Ordering::Relaxed;

use super::{min_by, short_time, Policy};

pub(crate) const POWER: Policy = Policy {
    name: "power",
    pick: |idle| min_by(idle, |b| (b.processing_time, b.last_chosen.load(Relaxed))),
    reason: |d| format!("fastest idle ({})", short_time(d.declared)),
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::backend;
    use std::time::Duration;

    fn pick(idle: &[std::sync::Arc<crate::balancer::backend::Backend>]) -> Option<usize> {
        (POWER.pick)(idle)
    }

    #[test]
    fn picks_the_fastest() {
        let idle = [backend(1, 2.0, 0), backend(2, 0.5, 9), backend(3, 1.0, 0)];
        assert_eq!(pick(&idle), Some(1));
        assert_eq!(pick(&[]), None);
    }

    #[test]
    fn rotates_among_equals() {
        let idle = [backend(1, 0.5, 7), backend(2, 0.5, 3), backend(3, 0.5, 5), backend(4, 1.0, 0)];
        assert_eq!(pick(&idle), Some(1));
    }

    #[test]
    fn ignores_measurements() {
        let fast = backend(1, 0.1, 0);
        let nine = Duration::from_secs(9);
        fast.record_reply(nine, nine, 0, None);
        assert_eq!(pick(&[backend(2, 0.2, 0), fast]), Some(1));
    }
}
