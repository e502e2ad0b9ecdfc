//! `round-robin`: the idle server chosen longest ago, whatever its power.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::{Facts, Policy};
use crate::balancer::backend::Backend;

/// Least recently chosen idle server.
pub struct RoundRobin;

impl Policy for RoundRobin {
    fn name(&self) -> &'static str {
        "round-robin"
    }

    fn pick(&self, idle: &[Arc<Backend>]) -> Option<usize> {
        (0..idle.len()).min_by_key(|&i| (idle[i].last_chosen.load(Relaxed), idle[i].id))
    }

    fn reason(&self, _chosen: &Facts) -> String {
        "its turn (idle the longest since chosen)".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::backend;

    #[test]
    fn ignores_power() {
        let idle = [backend(1, 0.1, 5), backend(2, 9.0, 2)];
        assert_eq!(RoundRobin.pick(&idle), Some(1));
    }

    #[test]
    fn never_chosen_goes_first_by_id() {
        let idle = [backend(3, 0.1, 0), backend(2, 9.0, 0)];
        assert_eq!(RoundRobin.pick(&idle), Some(1));
    }
}
