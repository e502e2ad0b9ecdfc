//! `power`: the idle server with the smallest declared processing time; among servers of equal
//! power, the one chosen longest ago (round robin). The original project's rule.

use super::{short_time, Candidate, Policy};

/// Fastest idle server first, round robin among equals.
pub struct Power;

impl Policy for Power {
    fn name(&self) -> &'static str {
        "power"
    }

    fn pick(&self, idle: &[Candidate]) -> Option<usize> {
        (0..idle.len()).min_by_key(|&i| (idle[i].processing_time, idle[i].last_chosen))
    }

    fn reason(&self, chosen: &Candidate) -> String {
        format!("fastest idle ({})", short_time(chosen.processing_time))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::candidate;

    #[test]
    fn picks_the_fastest() {
        let idle = [
            candidate(1, 2.0, 0),
            candidate(2, 0.5, 9),
            candidate(3, 1.0, 0),
        ];
        assert_eq!(Power.pick(&idle), Some(1));
        assert_eq!(Power.pick(&[]), None);
    }

    #[test]
    fn rotates_among_equals() {
        let idle = [
            candidate(1, 0.5, 7),
            candidate(2, 0.5, 3),
            candidate(3, 0.5, 5),
            candidate(4, 1.0, 0),
        ];
        assert_eq!(Power.pick(&idle), Some(1));
    }

    #[test]
    fn ignores_measurements() {
        let mut fast = candidate(1, 0.1, 0);
        fast.measured = Some(std::time::Duration::from_secs(9));
        assert_eq!(Power.pick(&[candidate(2, 0.2, 0), fast]), Some(1));
    }
}
