//! `round-robin`: the idle server chosen longest ago, whatever its power.

use super::{Candidate, Policy};

/// Least recently chosen idle server.
pub struct RoundRobin;

impl Policy for RoundRobin {
    fn name(&self) -> &'static str {
        "round-robin"
    }

    fn pick(&self, idle: &[Candidate]) -> Option<usize> {
        (0..idle.len()).min_by_key(|&i| (idle[i].last_chosen, idle[i].id))
    }

    fn reason(&self, _chosen: &Candidate) -> String {
        "its turn (idle the longest since chosen)".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::candidate;

    #[test]
    fn ignores_power() {
        let idle = [candidate(1, 0.1, 5), candidate(2, 9.0, 2)];
        assert_eq!(RoundRobin.pick(&idle), Some(1));
    }

    #[test]
    fn never_chosen_goes_first_by_id() {
        let idle = [candidate(3, 0.1, 0), candidate(2, 9.0, 0)];
        assert_eq!(RoundRobin.pick(&idle), Some(1));
    }
}
