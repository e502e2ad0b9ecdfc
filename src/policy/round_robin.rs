//! `round-robin`: the idle server chosen longest ago, ignoring power.

use std::sync::atomic::Ordering::Relaxed;

use super::{min_by, Policy};

pub(crate) const ROUND_ROBIN: Policy = Policy {
    name: "round-robin",
    pick: |idle| min_by(idle, |b| (b.last_chosen.load(Relaxed), b.id)),
    reason: |_| "its turn (idle the longest since chosen)".into(),
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::backend;

    fn pick(idle: &[std::sync::Arc<crate::balancer::backend::Backend>]) -> Option<usize> {
        (ROUND_ROBIN.pick)(idle)
    }

    #[test]
    fn ignores_power() {
        let idle = [backend(1, 0.1, 5), backend(2, 9.0, 2)];
        assert_eq!(pick(&idle), Some(1));
    }

    #[test]
    fn takes_never_chosen_first_by_id() {
        let idle = [backend(3, 0.1, 0), backend(2, 9.0, 0)];
        assert_eq!(pick(&idle), Some(1));
    }
}
