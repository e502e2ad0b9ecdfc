//! `power`: the idle server with the smallest declared processing time; among servers of equal
//! power, the one chosen longest ago (round robin). The original project's rule.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::{short_time, Facts, Policy};
use crate::balancer::backend::Backend;

/// Fastest idle server first, round robin among equals.
pub struct Power;

impl Policy for Power {
    fn name(&self) -> &'static str {
        "power"
    }

    fn pick(&self, idle: &[Arc<Backend>]) -> Option<usize> {
        (0..idle.len())
            .min_by_key(|&i| (idle[i].processing_time, idle[i].last_chosen.load(Relaxed)))
    }

    fn reason(&self, chosen: &Facts) -> String {
        format!("fastest idle ({})", short_time(chosen.declared))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::backend;

    #[test]
    fn picks_the_fastest() {
        let idle = [backend(1, 2.0, 0), backend(2, 0.5, 9), backend(3, 1.0, 0)];
        assert_eq!(Power.pick(&idle), Some(1));
        assert_eq!(Power.pick(&[]), None);
    }

    #[test]
    fn rotates_among_equals() {
        let idle = [
            backend(1, 0.5, 7),
            backend(2, 0.5, 3),
            backend(3, 0.5, 5),
            backend(4, 1.0, 0),
        ];
        assert_eq!(Power.pick(&idle), Some(1));
    }

    #[test]
    fn ignores_measurements() {
        let fast = backend(1, 0.1, 0);
        let nine = std::time::Duration::from_secs(9);
        fast.record_reply(nine, nine, 0, None);
        assert_eq!(Power.pick(&[backend(2, 0.2, 0), fast]), Some(1));
    }
}
