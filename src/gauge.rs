//! Counts of things in progress (clients connected, requests in flight), kept right by guards:
//! the count goes down when the guard drops, on every path out, panics included.

use std::sync::atomic::{AtomicUsize, Ordering};

/// One unit of a count, held for as long as the guard lives.
pub struct Held<'a>(&'a AtomicUsize);

impl<'a> Held<'a> {
    /// Adds one to `count` until the guard drops.
    pub fn new(count: &'a AtomicUsize) -> Held<'a> {
        count.fetch_add(1, Ordering::SeqCst);
        Held(count)
    }

    /// Takes charge of a unit already added to `count` (by another thread, say).
    pub fn adopt(count: &'a AtomicUsize) -> Held<'a> {
        Held(count)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_while_held_even_through_a_panic() {
        let count = AtomicUsize::new(0);
        {
            let _a = Held::new(&count);
            let _b = Held::new(&count);
            assert_eq!(count.load(Ordering::SeqCst), 2);
        }
        assert_eq!(count.load(Ordering::SeqCst), 0);
        let _ = std::panic::catch_unwind(|| {
            let _c = Held::new(&count);
            panic!("boom");
        });
        assert_eq!(count.load(Ordering::SeqCst), 0);
    }
}
