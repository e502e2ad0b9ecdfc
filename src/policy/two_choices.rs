//! `two-choices`: two idle servers at random, the less loaded of the two (the "power of two
//! choices": it spreads load almost as well as looking at every server).

use super::{load, min_by, Policy};

pub(crate) const TWO_CHOICES: Policy = Policy {
    name: "two-choices",
    pick: |idle| match idle.len() {
        0 | 1 => min_by(idle, load),
        n => {
            // Randomness here needs to be cheap, not strong: fastrand's per-thread generator.
            let a = fastrand::usize(..n);
            let b = (a + 1 + fastrand::usize(..n - 1)) % n;
            [a, b].into_iter().min_by_key(|&i| load(&idle[i]))
        }
    },
    reason: |d| {
        let (before, served) = (d.in_flight, d.served);
        format!("less loaded of two at random ({before} in flight, {served} served)")
    },
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::backend;
    use std::sync::atomic::Ordering::Relaxed;

    fn pick(idle: &[std::sync::Arc<crate::balancer::backend::Backend>]) -> Option<usize> {
        (TWO_CHOICES.pick)(idle)
    }

    #[test]
    fn never_picks_the_most_loaded_of_many() {
        // Wherever the most loaded one sits: its pair is always another server.
        for heaviest in 0..4 {
            let idle: Vec<_> = (0..4).map(|i| backend(i, 0.1, 0)).collect();
            for (i, b) in idle.iter().enumerate() {
                let load = if i == heaviest { 100 } else { i as u64 };
                b.requests.store(load, Relaxed);
            }
            for _ in 0..200 {
                let i = pick(&idle).unwrap();
                assert_ne!(i, heaviest, "the most loaded one always loses its pair");
            }
        }
    }

    #[test]
    fn picks_both_of_two_equals() {
        let idle = [backend(1, 0.1, 0), backend(2, 0.1, 0)];
        let picked: std::collections::HashSet<usize> =
            (0..100).map(|_| pick(&idle).unwrap()).collect();
        assert_eq!(picked.len(), 2);
        assert_eq!(pick(&[backend(5, 1.0, 0)]), Some(0));
        assert_eq!(pick(&[]), None);
    }
}
