//! `measured`: the fastest idle server by the service time the balancer measured, so a server
//! whose declaration is wrong is ranked by what it really does; until measured, as declared.

use std::sync::atomic::Ordering::Relaxed;

use super::{min_by, short_time, Policy};

pub(crate) const MEASURED: Policy = Policy {
    name: "measured",
    pick: |idle| min_by(idle, |b| (b.expected_time(), b.last_chosen.load(Relaxed))),
    reason: |d| match d.measured {
        Some(m) => format!("fastest idle as measured ({})", short_time(m)),
        None => format!("fastest idle, not measured yet ({} declared)", short_time(d.declared)),
    },
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::backend;
    use std::time::Duration;

    fn pick(idle: &[std::sync::Arc<crate::balancer::backend::Backend>]) -> Option<usize> {
        (MEASURED.pick)(idle)
    }

    #[test]
    fn ranks_by_measurement_over_declaration() {
        let liar = backend(1, 0.1, 0);
        let slow = Duration::from_millis(900);
        liar.record_reply(slow, slow, 0, None);
        let honest = backend(2, 0.5, 0);
        assert_eq!(pick(&[liar, honest]), Some(1));
    }

    #[test]
    fn counts_unmeasured_servers_as_declared_and_equals_rotate() {
        let idle = [backend(1, 0.5, 4), backend(2, 0.5, 2), backend(3, 1.0, 0)];
        assert_eq!(pick(&idle), Some(1));
    }
}
