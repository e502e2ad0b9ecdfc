//! Counts of things in progress (clients, requests in flight), kept right by guards that count
//! down on every path out, panics included; [`wait_for_zero`] waits for zero without polling.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

/// Guards only the hand-over between a guard that brings a count to zero and the threads
/// waiting for that, so no wake-up is lost between their check and their wait.
static ZERO_LOCK: Mutex<()> = Mutex::new(());
/// Wakes the threads in [`wait_for_zero`] when some count reaches zero.
static ZERO: Condvar = Condvar::new();

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
        if self.0.fetch_sub(1, Ordering::SeqCst) == 1 {
            let _hand_over = ZERO_LOCK.lock();
            ZERO.notify_all();
        }
    }
}

/// Waits until `count` is zero or `deadline` passes; true when it reached zero. The count
/// must go down through [`Held`] guards for the waiter to be woken at once.
pub fn wait_for_zero(count: &AtomicUsize, deadline: Instant) -> bool {
    let mut hand_over = ZERO_LOCK.lock();
    while count.load(Ordering::SeqCst) > 0 {
        if ZERO.wait_until(&mut hand_over, deadline).timed_out() {
            return count.load(Ordering::SeqCst) == 0;
        }
    }
    true
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

    #[test]
    fn a_waiter_wakes_when_the_last_guard_drops() {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let held = Held::new(&COUNT);
        let dropper = std::thread::spawn(move || drop(held));
        let patience = std::time::Duration::from_secs(30);
        assert!(wait_for_zero(&COUNT, Instant::now() + patience));
        dropper.join().unwrap();
        let _held = Held::new(&COUNT);
        assert!(!wait_for_zero(&COUNT, Instant::now()));
    }
}
