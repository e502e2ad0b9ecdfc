//! `two-choices`: pick two idle servers at random and take the less loaded one (fewer requests
//! in flight, then fewer served) — the "power of two choices", which spreads load almost as well as looking at every
//! server, at the cost of looking at two.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Facts, Policy};
use crate::balancer::backend::Backend;

/// Less loaded of two random idle servers.
pub struct TwoChoices;

impl Policy for TwoChoices {
    fn name(&self) -> &'static str {
        "two-choices"
    }

    fn pick(&self, idle: &[Arc<Backend>]) -> Option<usize> {
        match idle.len() {
            0 => None,
            1 => Some(0),
            n => {
                // Randomness here needs to be cheap, not strong: fastrand's per-thread generator.
                let a = fastrand::usize(..n);
                let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                let load = |i: usize| {
                    let b = &idle[i];
                    let lc = b.last_chosen.load(Ordering::Relaxed);
                    let in_flight = b.in_flight.load(Ordering::Relaxed);
                    (in_flight, b.requests.load(Ordering::Relaxed), lc)
                };
                Some(if load(a) <= load(b) { a } else { b })
            }
        }
    }

    fn reason(&self, chosen: &Facts) -> String {
        let (before, served) = (chosen.in_flight, chosen.served);
        format!("less loaded of two at random ({before} in flight, {served} served)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::backend;

    #[test]
    fn never_picks_the_most_loaded_of_many() {
        let policy = TwoChoices;
        let idle: Vec<_> = (0..4).map(|i| backend(i, 0.1, 0)).collect();
        for (i, b) in idle.iter().enumerate() {
            b.requests.store(i as u64 * 10, Ordering::Relaxed);
        }
        for _ in 0..200 {
            let i = policy.pick(&idle).unwrap();
            assert_ne!(idle[i].id, 3, "the most loaded one always loses its pair");
        }
    }

    #[test]
    fn both_of_two_equals_get_picked() {
        let policy = TwoChoices;
        let idle = [backend(1, 0.1, 0), backend(2, 0.1, 0)];
        let picked: std::collections::HashSet<usize> =
            (0..100).map(|_| policy.pick(&idle).unwrap()).collect();
        assert_eq!(picked.len(), 2);
        assert_eq!(policy.pick(&[backend(5, 1.0, 0)]), Some(0));
        assert_eq!(policy.pick(&[]), None);
    }
}
