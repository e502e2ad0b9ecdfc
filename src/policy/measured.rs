//! `measured`: like `power`, but ranked by the service time the balancer measured (a moving
//! average of the time to each reply's first byte), so a server whose declared processing time
//! is wrong is ranked by what it really does. Until measured, a server counts as declared.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::{short_time, Facts, Policy};
use crate::balancer::backend::Backend;

/// Fastest idle server by measured service time, round robin among equals.
pub struct Measured;

impl Policy for Measured {
    fn name(&self) -> &'static str {
        "measured"
    }

    fn pick(&self, idle: &[Arc<Backend>]) -> Option<usize> {
        (0..idle.len())
            .min_by_key(|&i| (idle[i].expected_time(), idle[i].last_chosen.load(Relaxed)))
    }

    fn reason(&self, chosen: &Facts) -> String {
        match chosen.measured {
            Some(m) => format!("fastest idle as measured ({})", short_time(m)),
            None => format!(
                "fastest idle, not measured yet ({} declared)",
                short_time(chosen.declared)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::backend;
    use std::time::Duration;

    #[test]
    fn ranks_by_measurement_over_declaration() {
        let liar = backend(1, 0.1, 0);
        let slow = Duration::from_millis(900);
        liar.record_reply(slow, slow, 0, None);
        let honest = backend(2, 0.5, 0);
        assert_eq!(Measured.pick(&[liar, honest]), Some(1));
    }

    #[test]
    fn unmeasured_servers_count_as_declared_and_equals_rotate() {
        let idle = [backend(1, 0.5, 4), backend(2, 0.5, 2), backend(3, 1.0, 0)];
        assert_eq!(Measured.pick(&idle), Some(1));
    }
}
