//! `two-choices`: pick two idle servers at random and take the less loaded one (fewer requests
//! served) — the "power of two choices", which spreads load almost as well as looking at every
//! server, at the cost of looking at two.

use super::{Candidate, Policy};

/// Less loaded of two random idle servers.
pub struct TwoChoices;

impl Policy for TwoChoices {
    fn name(&self) -> &'static str {
        "two-choices"
    }

    fn pick(&self, idle: &[Candidate]) -> Option<usize> {
        match idle.len() {
            0 => None,
            1 => Some(0),
            n => {
                // Randomness here needs to be cheap, not strong: fastrand's per-thread generator.
                let a = fastrand::usize(..n);
                let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                let load = |i: usize| (idle[i].served, idle[i].last_chosen);
                Some(if load(a) <= load(b) { a } else { b })
            }
        }
    }

    fn reason(&self, chosen: &Candidate) -> String {
        format!("less loaded of two at random ({} served)", chosen.served)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::candidate;

    #[test]
    fn never_picks_the_most_loaded_of_many() {
        let policy = TwoChoices;
        let idle: Vec<Candidate> = (0..4)
            .map(|i| Candidate {
                served: i as u64 * 10,
                ..candidate(i, 0.1, 0)
            })
            .collect();
        for _ in 0..200 {
            let i = policy.pick(&idle).unwrap();
            assert_ne!(idle[i].id, 3, "the most loaded one always loses its pair");
        }
    }

    #[test]
    fn both_of_two_equals_get_picked() {
        let policy = TwoChoices;
        let idle = [candidate(1, 0.1, 0), candidate(2, 0.1, 0)];
        let picked: std::collections::HashSet<usize> =
            (0..100).map(|_| policy.pick(&idle).unwrap()).collect();
        assert_eq!(picked.len(), 2);
        assert_eq!(policy.pick(&[candidate(5, 1.0, 0)]), Some(0));
        assert_eq!(policy.pick(&[]), None);
    }
}
