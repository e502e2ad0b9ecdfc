//! The idle queue: which servers are free right now, and who gets one next.
//!
//! Locking, in one place:
//! - `state` (a `parking_lot::Mutex`) guards the idle list, the pool's membership and the line
//!   of waiting requests. It is held for list operations only, never across I/O: a server's
//!   connection leaves the lock inside a [`Lease`] and is used outside it.
//! - Each waiting request sleeps on its own `Condvar` (on `state`), kept in the line by its
//!   ticket, so that a returned server wakes exactly the first in line: strictly first come,
//!   first served, and no herd of threads woken for one server.
//! - `joined` (a `Condvar` on `state`) wakes the balancer's start-up wait when a server joins.
//! - `returned` (a crossbeam channel) carries servers back from finished requests. Sending
//!   never blocks; whoever takes the lock next moves them into the idle list.
//!
//! Each server is its one [`Backend`], shared with the policies and the status page; the queue
//! is generic over the item it hands out with it (a live connection in the balancer, a plain
//! number in the tests), so its ordering and blocking are tested without sockets.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::balancer::backend::Backend;
use crate::policy::Policy;

/// Why no server was handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoServer {
    /// No server is in the pool at all (none started, or all down).
    NoneUp,
    /// Every server stayed busy until the timeout.
    TimedOut,
    /// The balancer is shutting down.
    Stopped,
}

/// A server's place in the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// Takes requests.
    Active,
    /// Finishes its request in flight, then leaves; gets no new one.
    Draining,
}

/// The idle queue; see the module docs for its locking.
pub struct IdleQueue<T> {
    policy: &'static dyn Policy,
    /// Guards the idle list, membership and the line of waiting requests.
    state: Mutex<State<T>>,
    /// Wakes [`IdleQueue::wait_for_members`] when a server joins or the queue stops.
    joined: Condvar,
    /// Carries servers back from finished requests (sending side).
    returned_tx: Sender<(Arc<Backend>, T)>,
    /// Carries servers back from finished requests (receiving side, drained under `state`).
    returned_rx: Receiver<(Arc<Backend>, T)>,
}

struct State<T> {
    /// Idle servers, as the policy sees them; `items[i]` belongs to `idle[i]`.
    idle: Vec<Arc<Backend>>,
    items: Vec<T>,
    /// Every server in the pool, idle or busy.
    members: HashMap<u32, Membership>,
    /// Requests waiting for a server, by ticket (first in line = smallest ticket).
    in_line: BTreeMap<u64, Waiter>,
    /// The next ticket for the line.
    next_ticket: u64,
    /// Sequence number of the last hand-out (for round robin).
    last_seq: u64,
    stopped: bool,
}

/// One request waiting in line.
struct Waiter {
    since: Instant,
    /// Wakes this request alone; used with `state`.
    wake: Arc<Condvar>,
}

impl<T> State<T> {
    fn any_active(&self) -> bool {
        self.members.values().any(|m| *m == Membership::Active)
    }

    /// Wakes the first in line, who may now be able to take a server.
    fn wake_first(&self) {
        if let Some(first) = self.in_line.values().next() {
            first.wake.notify_one();
        }
    }

    /// Wakes everyone in line: the pool emptied or the queue stopped, and all must hear it.
    fn wake_all(&self) {
        for waiter in self.in_line.values() {
            waiter.wake.notify_one();
        }
    }
}

impl<T> IdleQueue<T> {
    /// An empty queue that hands out servers by `policy`.
    pub fn new(policy: &'static dyn Policy) -> Self {
        let (returned_tx, returned_rx) = crossbeam_channel::unbounded();
        IdleQueue {
            policy,
            state: Mutex::new(State {
                idle: Vec::new(),
                items: Vec::new(),
                members: HashMap::new(),
                in_line: BTreeMap::new(),
                next_ticket: 0,
                last_seq: 0,
                stopped: false,
            }),
            joined: Condvar::new(),
            returned_tx,
            returned_rx,
        }
    }

    /// The policy.
    pub fn policy(&self) -> &dyn Policy {
        self.policy
    }

    /// Adds an idle server to the pool. Returns false (and drops `item`) when a server with
    /// the same id is already in it.
    pub fn add(&self, server: Arc<Backend>, item: T) -> bool {
        let mut s = self.lock();
        if s.members.contains_key(&server.id) {
            return false;
        }
        s.members.insert(server.id, Membership::Active);
        s.idle.push(server);
        s.items.push(item);
        s.wake_first();
        self.joined.notify_all();
        true
    }

    /// Waits until `n` servers are in the pool, the queue stops or `timeout` passes; returns
    /// how many are in it.
    pub fn wait_for_members(&self, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        while s.members.len() < n && !s.stopped {
            if self.joined.wait_until(&mut s, deadline).timed_out() {
                break;
            }
        }
        s.members.len()
    }

    /// Takes the idle server the policy prefers, waiting in line up to `timeout` while all
    /// are busy. Requests are served strictly in the order they started waiting.
    ///
    /// # Errors
    /// [`NoServer`] says why none was handed out.
    pub fn acquire(&self, timeout: Duration) -> Result<Lease<'_, T>, NoServer> {
        let started = Instant::now();
        let deadline = started.checked_add(timeout);
        let mut s = self.lock();
        // This request's ticket, its place when it joined the line, and its condvar.
        let mut waiting: Option<(u64, usize, Arc<Condvar>)> = None;
        loop {
            self.absorb_returned(&mut s);
            let first_in_line = match &waiting {
                Some((ticket, _, _)) => s.in_line.keys().next() == Some(ticket),
                None => s.in_line.is_empty(),
            };
            let outcome = if s.stopped {
                Some(Err(NoServer::Stopped))
            } else if !s.any_active() {
                Some(Err(NoServer::NoneUp))
            } else if first_in_line {
                self.policy.pick(&s.idle).map(Ok)
            } else {
                None
            };
            let outcome = match outcome {
                None if deadline.is_some_and(|d| Instant::now() >= d) => {
                    Some(Err(NoServer::TimedOut))
                }
                other => other,
            };
            if let Some(outcome) = outcome {
                if let Some((ticket, _, _)) = &waiting {
                    s.in_line.remove(ticket);
                }
                let lease = outcome.map(|i| {
                    let mut lease = self.take(&mut s, i);
                    lease.decision.position = waiting.as_ref().map(|(_, place, _)| *place);
                    lease.decision.waited = started.elapsed();
                    lease
                });
                // The next in line may go on: to another idle server, or to its own error.
                if !s.idle.is_empty() || lease.is_err() {
                    s.wake_first();
                }
                return lease;
            }
            let wake = match &waiting {
                Some((_, _, wake)) => Arc::clone(wake),
                None => {
                    let ticket = s.next_ticket;
                    s.next_ticket += 1;
                    let wake = Arc::new(Condvar::new());
                    let since = started;
                    s.in_line.insert(
                        ticket,
                        Waiter {
                            since,
                            wake: Arc::clone(&wake),
                        },
                    );
                    waiting = Some((ticket, s.in_line.len(), Arc::clone(&wake)));
                    wake
                }
            };
            match deadline {
                Some(d) => {
                    wake.wait_until(&mut s, d);
                }
                None => wake.wait(&mut s),
            }
        }
    }

    /// Marks a server as draining: taken out now if idle, or when its request finishes.
    /// Returns false when it was not in the pool.
    pub fn retire(&self, id: u32) -> bool {
        let mut s = self.lock();
        if !s.members.contains_key(&id) {
            return false;
        }
        if let Some(i) = s.idle.iter().position(|b| b.id == id) {
            s.idle.swap_remove(i);
            s.items.swap_remove(i);
            s.members.remove(&id);
        } else {
            s.members.insert(id, Membership::Draining);
        }
        if !s.any_active() {
            s.wake_all();
        }
        true
    }

    /// Refuses every further request; waiting ones get [`NoServer::Stopped`].
    pub fn stop(&self) {
        let mut s = self.state.lock();
        s.stopped = true;
        s.wake_all();
        self.joined.notify_all();
    }

    /// The server's place in the pool, if it is in it.
    pub fn membership(&self, id: u32) -> Option<Membership> {
        self.lock().members.get(&id).copied()
    }

    /// How many servers are idle, how many are in the pool, how many requests wait.
    pub fn counts(&self) -> (usize, usize, usize) {
        let s = self.lock();
        (s.idle.len(), s.members.len(), s.in_line.len())
    }

    /// The queue as it is now.
    pub fn snapshot(&self) -> Snapshot {
        let s = self.lock();
        Snapshot {
            idle: s.idle.iter().map(|b| b.id).collect(),
            members: s.members.iter().map(|(id, m)| (*id, *m)).collect(),
            waiting: s.in_line.len(),
            longest_wait: s
                .in_line
                .values()
                .next()
                .map_or(Duration::ZERO, |w| w.since.elapsed()),
        }
    }

    /// Takes the lock and brings the idle list up to date with returned servers.
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        let mut s = self.state.lock();
        self.absorb_returned(&mut s);
        s
    }

    fn take(&self, s: &mut State<T>, i: usize) -> Lease<'_, T> {
        let idle: Vec<u32> = s.idle.iter().map(|b| b.id).collect();
        let busy = s
            .members
            .keys()
            .filter(|id| !idle.contains(id))
            .copied()
            .collect();
        let server = s.idle.swap_remove(i);
        let item = s.items.swap_remove(i);
        s.last_seq += 1;
        server.last_chosen.store(s.last_seq, Ordering::Relaxed);
        Lease {
            queue: self,
            server,
            item: Some(item),
            decision: Decision {
                idle,
                busy,
                ..Decision::default()
            },
        }
    }

    /// Moves servers returned through the channel into the idle list (or out of the pool,
    /// for a draining one).
    fn absorb_returned(&self, s: &mut State<T>) {
        for (server, item) in self.returned_rx.try_iter() {
            match s.members.get(&server.id) {
                Some(Membership::Active) => {
                    s.idle.push(server);
                    s.items.push(item);
                }
                Some(Membership::Draining) => {
                    s.members.remove(&server.id);
                }
                None => {}
            }
        }
    }

    /// Returns a server's item to the idle list (after [`Lease::set_aside`]).
    pub fn give_back(&self, server: Arc<Backend>, item: T) {
        // The receiver lives as long as the queue, so the send cannot fail.
        let _ = self.returned_tx.send((server, item));
        // Taking the lock moves the server into the idle list before the first in line looks.
        self.lock().wake_first();
    }

    /// Takes a server out of the pool (after [`Lease::set_aside`]).
    pub fn remove_member(&self, id: u32) {
        let mut s = self.lock();
        s.members.remove(&id);
        if !s.any_active() {
            s.wake_all();
        }
    }
}

/// A server handed to one request. Give it back with [`Lease::release`]; if the request
/// broke its connection, [`Lease::mark_down`] its server (dropping a lease does that too, so
/// a connection in an unknown state is never reused).
pub struct Lease<'q, T> {
    queue: &'q IdleQueue<T>,
    server: Arc<Backend>,
    item: Option<T>,
    /// How the choice was made, for the log and the dashboard.
    decision: Decision,
}

/// What the queue saw when it handed out a server.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decision {
    /// Servers idle at that moment (the chosen one included), in no particular order.
    pub idle: Vec<u32>,
    /// Servers in the pool but busy.
    pub busy: Vec<u32>,
    /// Place in line when the request started waiting (1 = first); `None` if it did not wait.
    pub position: Option<usize>,
    /// How long the request waited in line.
    pub waited: Duration,
}

/// The queue at one moment, for status pages.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Idle servers, by id (a member not idle is busy).
    pub idle: Vec<u32>,
    /// Every server in the pool.
    pub members: Vec<(u32, Membership)>,
    /// Requests waiting in line.
    pub waiting: usize,
    /// How long the first in line has waited.
    pub longest_wait: Duration,
}

impl<T> Lease<'_, T> {
    /// The server's id.
    pub fn id(&self) -> u32 {
        self.server.id
    }

    /// The server.
    pub fn server(&self) -> &Arc<Backend> {
        &self.server
    }

    /// What the queue saw when it handed the server out.
    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    /// The leased item (the server's connection).
    pub fn item(&mut self) -> &mut T {
        self.item
            .as_mut()
            .expect("a lease holds its item until released")
    }

    /// Returns the server to the idle list: its connection is clean and reusable.
    pub fn release(mut self) {
        if let Some(item) = self.item.take() {
            self.queue.give_back(Arc::clone(&self.server), item);
        }
    }

    /// Hands back the item while the server stays in the pool, busy, as if still leased: for
    /// replacing its connection. End with [`IdleQueue::give_back`] (a new item) or
    /// [`IdleQueue::remove_member`], so that requests wait for the server meanwhile instead
    /// of finding no server up.
    pub fn set_aside(mut self) -> (Arc<Backend>, T) {
        let item = self
            .item
            .take()
            .expect("a lease holds its item until released");
        (Arc::clone(&self.server), item)
    }

    /// Takes the server out of the pool (its connection broke) and hands back its item.
    pub fn mark_down(mut self) -> T {
        let item = self
            .item
            .take()
            .expect("a lease holds its item until released");
        self.queue.remove_member(self.server.id);
        item
    }
}

impl<T> std::fmt::Debug for Lease<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("server", &self.server.id)
            .field("decision", &self.decision)
            .finish()
    }
}

impl<T> Drop for Lease<'_, T> {
    fn drop(&mut self) {
        if self.item.take().is_some() {
            self.queue.remove_member(self.server.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{backend, by_name};
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    fn queue(servers: &[(u32, f64)]) -> IdleQueue<u32> {
        let q = IdleQueue::new(by_name("power").unwrap());
        for &(id, secs) in servers {
            assert!(q.add(backend(id, secs, 0), id));
        }
        q
    }

    const NOW: Duration = Duration::from_millis(0);
    /// How long a test waiter waits for a server: far longer than any hand-over takes, short
    /// enough that a missed wake-up fails the test instead of hanging the suite.
    const PATIENCE: Duration = Duration::from_secs(5);

    /// Polls `done` until it holds; fails the test after [`PATIENCE`].
    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !done() {
            assert!(Instant::now() < deadline, "gave up waiting for {what}");
            std::thread::yield_now();
        }
    }

    /// A thread that asks for a server and reports which it got; returns once it is in line.
    fn spawn_waiter(q: &Arc<IdleQueue<u32>>) -> std::thread::JoinHandle<Result<u32, NoServer>> {
        let waiting = q.counts().2;
        let thread = {
            let q = Arc::clone(q);
            std::thread::spawn(move || q.acquire(PATIENCE).map(|l| l.id()))
        };
        wait_for("the waiter to join the line", || q.counts().2 > waiting);
        thread
    }

    #[test]
    fn hands_out_fastest_first() {
        let q = queue(&[(1, 2.0), (2, 0.5), (3, 1.0)]);
        let a = q.acquire(NOW).unwrap();
        let b = q.acquire(NOW).unwrap();
        let c = q.acquire(NOW).unwrap();
        assert_eq!((a.id(), b.id(), c.id()), (2, 3, 1));
        assert_eq!(q.acquire(NOW).unwrap_err(), NoServer::TimedOut);
        b.release();
        assert_eq!(q.acquire(NOW).unwrap().id(), 3);
    }

    #[test]
    fn rotates_among_equal_power() {
        let q = queue(&[(1, 0.5), (2, 0.5), (3, 0.5), (4, 1.0)]);
        let mut order = Vec::new();
        for _ in 0..6 {
            let lease = q.acquire(NOW).unwrap();
            order.push(lease.id());
            lease.release();
        }
        // Every fast server in turn; the slow one never while a fast one is idle.
        let mut first = order[..3].to_vec();
        first.sort();
        assert_eq!(first, vec![1, 2, 3]);
        assert_eq!(order[3..], order[..3]);
    }

    #[test]
    fn a_lease_says_how_it_was_chosen() {
        let q = Arc::new(queue(&[(1, 0.5), (2, 1.0)]));
        let first = q.acquire(NOW).unwrap();
        assert_eq!(first.decision().busy, Vec::<u32>::new());
        let mut idle = first.decision().idle.clone();
        idle.sort();
        assert_eq!((idle, first.decision().position), (vec![1, 2], None));
        let second = q.acquire(NOW).unwrap();
        assert_eq!(
            (
                second.decision().idle.clone(),
                second.decision().busy.clone()
            ),
            (vec![2], vec![1])
        );
        let waiter = {
            let q = Arc::clone(&q);
            std::thread::spawn(move || q.acquire(PATIENCE).map(|l| l.decision().clone()))
        };
        wait_for("the waiter to join the line", || q.counts().2 == 1);
        assert_eq!(q.snapshot().waiting, 1);
        first.release();
        let decision = waiter.join().unwrap().unwrap();
        assert_eq!(decision.position, Some(1));
        assert_eq!(decision.busy, vec![2]);
    }

    #[test]
    fn a_lease_hands_out_the_servers_one_live_state() {
        let q = queue(&[(1, 0.5)]);
        let lease = q.acquire(NOW).unwrap();
        let took = Duration::from_millis(80);
        lease.server().record_reply(took, took, 0, None);
        lease.release();
        let lease = q.acquire(NOW).unwrap();
        assert_eq!(lease.server().measured(), Some(took));
        assert_eq!(lease.server().last_chosen.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn the_policy_ranks_by_the_measurement_the_status_page_shows() {
        let q = IdleQueue::new(by_name("measured").unwrap());
        let (liar, honest) = (backend(1, 0.01, 0), backend(2, 0.1, 0));
        assert!(q.add(Arc::clone(&liar), 1) && q.add(Arc::clone(&honest), 2));
        let lease = q.acquire(NOW).unwrap();
        assert_eq!(lease.id(), 1);
        let slow = Duration::from_millis(500);
        lease.server().record_reply(slow, slow, 0, None);
        // Its connection breaks and it is reconnected: what was measured stays measured.
        lease.mark_down();
        assert!(q.add(Arc::clone(&liar), 1));
        assert_eq!(liar.measured(), Some(slow));
        assert_eq!(q.acquire(NOW).unwrap().id(), 2);
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let q = queue(&[(1, 0.5)]);
        assert!(!q.add(backend(1, 0.1, 0), 99));
        assert_eq!(q.counts(), (1, 1, 0));
    }

    #[test]
    fn empty_pool_fails_at_once() {
        let q = queue(&[]);
        let started = Instant::now();
        assert_eq!(
            q.acquire(Duration::from_secs(10)).unwrap_err(),
            NoServer::NoneUp
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn blocks_until_a_server_is_released() {
        let q = Arc::new(queue(&[(7, 0.5)]));
        let held = q.acquire(NOW).unwrap();
        let waiter = spawn_waiter(&q);
        held.release();
        assert_eq!(waiter.join().unwrap(), Ok(7));
    }

    #[test]
    fn waiters_are_served_first_come_first_served() {
        let q = Arc::new(queue(&[(1, 0.5)]));
        let held = q.acquire(NOW).unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for n in 0..5 {
            let (q2, order2) = (Arc::clone(&q), Arc::clone(&order));
            threads.push(std::thread::spawn(move || {
                let lease = q2.acquire(PATIENCE).unwrap();
                order2.lock().push(n);
                lease.release();
            }));
            // Each joins the line before the next starts.
            wait_for("the waiter to join the line", || q.counts().2 == n + 1);
        }
        held.release();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*order.lock(), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn servers_marked_down_leave_and_waiters_hear_it() {
        let q = Arc::new(queue(&[(1, 0.5)]));
        let held = q.acquire(NOW).unwrap();
        let waiter = spawn_waiter(&q);
        assert_eq!(held.mark_down(), 1);
        assert_eq!(waiter.join().unwrap(), Err(NoServer::NoneUp));
        assert_eq!(q.membership(1), None);
    }

    #[test]
    fn a_server_set_aside_stays_in_the_pool_and_waiters_wait_for_it() {
        let q = Arc::new(queue(&[(1, 0.5)]));
        let (server, item) = q.acquire(NOW).unwrap().set_aside();
        assert_eq!(item, 1);
        // Being re-probed: still a member, so a request waits for it instead of `NoneUp`.
        let waiter = spawn_waiter(&q);
        assert_eq!(q.membership(1), Some(Membership::Active));
        q.give_back(Arc::clone(&server), 1);
        assert_eq!(waiter.join().unwrap(), Ok(1));
        // (The waiter dropped its lease, which took the server out.) The probe failed: the
        // server leaves, and waiters hear it.
        assert!(q.add(server, 1));
        let _ = q.acquire(NOW).unwrap().set_aside();
        let waiter = spawn_waiter(&q);
        q.remove_member(1);
        assert_eq!(waiter.join().unwrap(), Err(NoServer::NoneUp));
    }

    #[test]
    fn retire_drains_a_busy_server() {
        let q = queue(&[(1, 0.5), (2, 1.0)]);
        let busy = q.acquire(NOW).unwrap();
        assert!(q.retire(1));
        assert_eq!(q.membership(1), Some(Membership::Draining));
        busy.release();
        assert_eq!(q.membership(1), None);
        assert!(q.retire(2));
        assert_eq!(q.acquire(NOW).unwrap_err(), NoServer::NoneUp);
    }

    #[test]
    fn every_waiter_hears_at_once_when_the_last_active_server_goes() {
        let q = Arc::new(queue(&[(1, 0.5), (2, 1.0)]));
        let active = q.acquire(NOW).unwrap();
        let draining = q.acquire(NOW).unwrap();
        assert!(q.retire(2));
        let waiters = [spawn_waiter(&q), spawn_waiter(&q)];
        let started = Instant::now();
        active.mark_down();
        for w in waiters {
            assert_eq!(w.join().unwrap(), Err(NoServer::NoneUp));
        }
        assert!(started.elapsed() < Duration::from_secs(10));
        draining.release();
        assert_eq!(q.counts(), (0, 0, 0));
    }

    #[test]
    fn two_servers_freed_at_once_go_to_the_two_first_in_line() {
        let q = Arc::new(queue(&[(1, 0.5), (2, 0.5)]));
        let mut held = [q.acquire(NOW).unwrap(), q.acquire(NOW).unwrap()];
        let waiters = [spawn_waiter(&q), spawn_waiter(&q)];
        // Both come back before either waiter runs, with a single wake-up: the first in line
        // must pass the turn on to the second while a server is still idle.
        for lease in &mut held {
            let item = lease.item.take().unwrap();
            q.returned_tx
                .send((Arc::clone(&lease.server), item))
                .unwrap();
        }
        q.lock().wake_first();
        let started = Instant::now();
        let mut got: Vec<u32> = waiters.map(|w| w.join().unwrap().unwrap()).to_vec();
        got.sort_unstable();
        assert_eq!(got, vec![1, 2]);
        assert!(started.elapsed() < PATIENCE / 2, "{:?}", started.elapsed());
    }

    #[test]
    fn waiters_hear_at_once_when_the_last_active_server_is_retired() {
        let q = Arc::new(queue(&[(1, 0.5)]));
        let busy = q.acquire(NOW).unwrap();
        let waiters = [spawn_waiter(&q), spawn_waiter(&q)];
        let started = Instant::now();
        assert!(q.retire(1));
        for w in waiters {
            assert_eq!(w.join().unwrap(), Err(NoServer::NoneUp));
        }
        assert!(started.elapsed() < PATIENCE / 2, "{:?}", started.elapsed());
        busy.release();
        assert_eq!(q.counts(), (0, 0, 0));
    }

    #[test]
    fn a_lease_dropped_by_a_panic_takes_its_server_out_of_the_pool() {
        let q = Arc::new(queue(&[(1, 0.5), (2, 1.0)]));
        let q2 = Arc::clone(&q);
        let panicked = std::thread::spawn(move || {
            let _lease = q2.acquire(NOW).unwrap();
            panic!("a request broke while holding server 1");
        })
        .join();
        assert!(panicked.is_err());
        // Its connection is in an unknown state: never handed out again, never stuck busy.
        assert_eq!(q.membership(1), None);
        assert_eq!(q.counts(), (1, 1, 0));
        assert_eq!(q.acquire(NOW).unwrap().id(), 2);
    }

    #[test]
    fn a_waiter_that_times_out_passes_the_turn() {
        let q = Arc::new(queue(&[(1, 0.5)]));
        let held = q.acquire(NOW).unwrap();
        let impatient = {
            let q = Arc::clone(&q);
            std::thread::spawn(move || q.acquire(Duration::from_millis(50)).map(|l| l.id()))
        };
        wait_for("the impatient waiter to join the line", || {
            q.counts().2 == 1
        });
        let patient = spawn_waiter(&q);
        assert_eq!(impatient.join().unwrap(), Err(NoServer::TimedOut));
        held.release();
        assert_eq!(patient.join().unwrap(), Ok(1));
    }

    #[test]
    fn the_start_up_wait_ends_when_the_servers_join_or_time_runs_out() {
        let q = Arc::new(queue(&[(1, 0.5)]));
        assert_eq!(q.wait_for_members(2, NOW), 1);
        let joiner = {
            let q = Arc::clone(&q);
            std::thread::spawn(move || assert!(q.add(backend(2, 1.0, 0), 2)))
        };
        assert_eq!(q.wait_for_members(2, Duration::from_secs(30)), 2);
        joiner.join().unwrap();
    }

    #[test]
    fn stop_wakes_waiters() {
        let q = Arc::new(queue(&[(1, 0.5)]));
        let _held = q.acquire(NOW).unwrap();
        let waiter = spawn_waiter(&q);
        q.stop();
        assert_eq!(waiter.join().unwrap(), Err(NoServer::Stopped));
    }

    #[test]
    fn stress_never_hands_a_server_to_two_requests_or_loses_one() {
        const SERVERS: u32 = 4;
        const THREADS: usize = 16;
        const ROUNDS: usize = 2000;
        let q = Arc::new(queue(&[(0, 0.1), (1, 0.1), (2, 0.2), (3, 0.3)]));
        let in_use: Arc<Vec<AtomicBool>> =
            Arc::new((0..SERVERS).map(|_| AtomicBool::new(false)).collect());
        let served = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let (q, in_use, served) =
                    (Arc::clone(&q), Arc::clone(&in_use), Arc::clone(&served));
                std::thread::spawn(move || {
                    for _ in 0..ROUNDS {
                        let mut lease = q.acquire(Duration::from_secs(60)).unwrap();
                        let id = *lease.item() as usize;
                        assert_eq!(lease.id() as usize, id);
                        assert!(
                            !in_use[id].swap(true, Ordering::SeqCst),
                            "server {id} handed to two requests"
                        );
                        std::hint::spin_loop();
                        in_use[id].store(false, Ordering::SeqCst);
                        served.fetch_add(1, Ordering::Relaxed);
                        lease.release();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(served.load(Ordering::Relaxed), THREADS * ROUNDS);
        assert_eq!(q.counts(), (SERVERS as usize, SERVERS as usize, 0));
    }
}
