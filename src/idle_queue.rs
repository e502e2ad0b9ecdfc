//! The idle queue: which servers have a free worker now, and who gets one next. The balancer
//! keeps a connection per worker of each server; a server with a free one is *idle* to the
//! policies, which pick among those. The queue is generic over the item it hands out with each
//! [`Backend`] (a connection in the balancer, a number in the tests), so its ordering and
//! blocking are tested without sockets.
//!
//! Locking, in one place:
//! - `state` (a `parking_lot::Mutex`) guards the idle list, the members, the line of waiting
//!   requests and the workers handed to them. It is held for list operations only, never
//!   across I/O (a connection leaves it inside a [`Lease`]), and nothing is allocated under it
//!   on a request's path (lists keep their capacity).
//! - A waiting request sleeps on its thread's own `Condvar` (on `state`). A freed worker goes
//!   straight to the first in line (put in `handed` under the lock) and only that request is
//!   woken: no race with newcomers, strictly first come first served, one wake-up per hand-over.
//! - `joined` (a `Condvar` on `state`) wakes the balancer's start-up wait when a server joins.
//! - `returned` (a crossbeam channel) carries connections back from finished requests;
//!   whoever takes the lock next hands them on or makes them idle.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::balancer::backend::Backend;
use crate::policy::{Decision, Policy};

/// Why no server was handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoServer {
    /// No server is in the pool (none started, or all down).
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
    /// Finishes its requests in flight, then leaves; gets no new one.
    Draining,
}

thread_local! {
    /// What wakes this thread while it waits in line: one per thread, not per request.
    static WAKE: Arc<Condvar> = Arc::new(Condvar::new());
}

/// The idle queue; see the module docs for its locking.
pub struct IdleQueue<T> {
    pub policy: &'static Policy,
    state: Mutex<State<T>>,
    joined: Condvar,
    returned_tx: Sender<(Arc<Backend>, T)>,
    returned_rx: Receiver<(Arc<Backend>, T)>,
}

struct State<T> {
    /// Servers with a free worker, each once, as the policy sees them.
    idle: Vec<Arc<Backend>>,
    /// Every server in the pool, idle or busy.
    members: HashMap<u32, Member<T>>,
    /// Requests waiting for a worker, first in line first: when each started waiting, and its
    /// thread's condvar, which also tells it apart (a thread waits for one request at a time).
    in_line: VecDeque<(Instant, Arc<Condvar>)>,
    /// Workers handed to requests that were in line, until they wake and take them.
    handed: Vec<(Arc<Condvar>, Lent<T>)>,
    /// Sequence number of the last hand-out (for round robin).
    last_seq: u64,
    stopped: bool,
}

struct Member<T> {
    backend: Arc<Backend>,
    membership: Membership,
    /// Its connections the queue knows: free, handed out or set aside.
    conns: usize,
    free: Vec<T>,
}

/// A worker taken from the idle list, with the facts of the choice.
type Lent<T> = (Arc<Backend>, T, Decision);

impl<T> State<T> {
    /// Why no request can get a worker now, if none can: the queue stopped, or no server is up.
    fn hopeless(&self) -> Option<NoServer> {
        let mut members = self.members.values();
        if self.stopped {
            Some(NoServer::Stopped)
        } else if members.any(|m| m.membership == Membership::Active) {
            None
        } else {
            Some(NoServer::NoneUp)
        }
    }

    /// Wakes everyone in line: the pool emptied or the queue stopped, and all must hear it.
    fn wake_all(&self) {
        for (_, wake) in &self.in_line {
            wake.notify_one();
        }
    }

    /// Takes a free connection of `idle[i]`, noting the facts that explain the choice.
    fn take(&mut self, i: usize) -> Lent<T> {
        let server = Arc::clone(&self.idle[i]);
        let decision = Decision {
            free: self.members.values().map(|m| m.free.len()).sum(),
            busy: self.members.len() - self.idle.len(),
            declared: server.processing_time,
            measured: server.measured(),
            in_flight: server.in_flight.fetch_add(1, Relaxed),
            served: server.requests.load(Relaxed),
            ..Decision::default()
        };
        let member = self.members.get_mut(&server.id).expect("idle means member");
        let item = member.free.pop().expect("idle means a free worker");
        if member.free.is_empty() {
            self.idle.swap_remove(i);
        }
        self.last_seq += 1;
        server.last_chosen.store(self.last_seq, Relaxed);
        (server, item, decision)
    }

    /// A free connection of an active member: straight to the first in line (waking only it),
    /// or into the idle list when no one waits.
    fn offer(&mut self, server: &Arc<Backend>, item: T) {
        let member = self.members.get_mut(&server.id).expect("a member");
        if member.free.is_empty() {
            self.idle.push(Arc::clone(server));
        }
        member.free.push(item);
        if let Some((_, wake)) = self.in_line.pop_front() {
            // It is the only free worker (anyone else would have been handed one already), so
            // it is the one the policy would pick.
            let i = self.idle.iter().position(|b| b.id == server.id);
            let lent = self.take(i.expect("offered just now"));
            wake.notify_one();
            self.handed.push((wake, lent));
        }
    }

    /// `n` connections of server `id` are gone (closed, or returned while draining); the
    /// server leaves with its last one. Returns whether it left.
    fn lose(&mut self, id: u32, n: usize) -> bool {
        let Some(member) = self.members.get_mut(&id) else {
            return false;
        };
        member.conns -= n;
        let left = member.conns == 0;
        if left {
            self.members.remove(&id);
        }
        if self.hopeless().is_some() {
            self.wake_all();
        }
        left
    }
}

impl<T> IdleQueue<T> {
    /// An empty queue that hands out servers by `policy`.
    pub fn new(policy: &'static Policy) -> Self {
        let (returned_tx, returned_rx) = crossbeam_channel::unbounded();
        IdleQueue {
            policy,
            state: Mutex::new(State {
                idle: Vec::new(),
                members: HashMap::new(),
                in_line: VecDeque::new(),
                handed: Vec::new(),
                last_seq: 0,
                stopped: false,
            }),
            joined: Condvar::new(),
            returned_tx,
            returned_rx,
        }
    }

    /// Adds a connection to one of the server's workers; the server joins the pool with its
    /// first. Returns false (and drops `item`) when another server with the same id is in the
    /// pool, when this one is draining, or when it already has a connection per worker.
    pub fn add(&self, server: Arc<Backend>, item: T) -> bool {
        // A server with no worker could never take a connection: it must not join, empty.
        if server.workers == 0 {
            return false;
        }
        let mut s = self.lock();
        // A new member has no connection yet, so it takes this one.
        let m = s.members.entry(server.id).or_insert_with(|| Member {
            backend: Arc::clone(&server),
            membership: Membership::Active,
            conns: 0,
            free: Vec::with_capacity(server.workers),
        });
        let full = m.conns >= server.workers;
        if !Arc::ptr_eq(&m.backend, &server) || m.membership == Membership::Draining || full {
            return false;
        }
        m.conns += 1;
        s.offer(&server, item);
        self.joined.notify_all();
        true
    }

    /// Waits until `n` servers are in the pool, the queue stops or `timeout` passes; returns
    /// how many are in it.
    pub fn wait_for_members(&self, n: usize, timeout: Duration) -> usize {
        let mut s = self.lock();
        let too_few = |s: &mut State<T>| s.members.len() < n && !s.stopped;
        self.joined.wait_while_for(&mut s, too_few, timeout);
        s.members.len()
    }

    /// Takes a free worker of the server the policy prefers, waiting in line up to `timeout`
    /// while all are busy. Requests are served strictly in the order they started waiting.
    ///
    /// # Errors
    /// [`NoServer`] says why none was handed out.
    pub fn acquire(&self, timeout: Duration) -> Result<Lease<'_, T>, NoServer> {
        let started = Instant::now();
        let mut s = self.lock();
        let (server, item, decision) = match (self.policy.pick)(&s.idle) {
            Some(i) if s.in_line.is_empty() => s.take(i),
            _ => wait_in_line(&mut s, started, timeout)?,
        };
        Ok(Lease { queue: self, server, item: Some(item), decision })
    }

    /// Marks a server as draining: its free workers are closed now, the busy ones when their
    /// requests finish. Returns false when it was not in the pool.
    pub fn retire(&self, id: u32) -> bool {
        let mut s = self.lock();
        let Some(member) = s.members.get_mut(&id) else {
            return false;
        };
        member.membership = Membership::Draining;
        let closed = member.free.drain(..).count();
        s.idle.retain(|b| b.id != id);
        s.lose(id, closed);
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
        self.lock().members.get(&id).map(|m| m.membership)
    }

    /// How many connections to server `id` the pool holds (free, in flight or being
    /// re-probed): fewer than its workers means some are to be reconnected.
    pub fn connections(&self, id: u32) -> usize {
        self.lock().members.get(&id).map_or(0, |m| m.conns)
    }

    /// The queue now, for status pages: every member, the requests in line, the longest wait.
    pub fn snapshot(&self) -> Snapshot {
        let s = self.lock();
        let members = s.members.iter().map(|(id, m)| (*id, m.membership));
        let since = s.in_line.front().map(|(since, _)| *since);
        Snapshot {
            members: members.collect(),
            waiting: s.in_line.len(),
            longest_wait: since.map_or(Duration::ZERO, |since| since.elapsed()),
        }
    }

    /// Takes the lock and hands on or makes idle the returned connections.
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        let mut s = self.state.lock();
        for (server, item) in self.returned_rx.try_iter() {
            server.in_flight.fetch_sub(1, Relaxed);
            match s.members.get(&server.id).map(|m| m.membership) {
                Some(Membership::Active) => s.offer(&server, item),
                _ => _ = s.lose(server.id, 1),
            }
        }
        s
    }

    /// Returns a connection to the idle list (after [`Lease::set_aside`]).
    pub fn give_back(&self, server: Arc<Backend>, item: T) {
        // The receiver lives as long as the queue, so the send cannot fail.
        let _ = self.returned_tx.send((server, item));
        // Taking the lock hands it to the first in line at once.
        drop(self.lock());
    }

    /// Drops one handed-out connection of `server` (it broke, or its re-probe failed); the
    /// server leaves the pool with its last connection. Returns whether it left.
    pub fn drop_connection(&self, server: &Backend) -> bool {
        let mut s = self.lock();
        server.in_flight.fetch_sub(1, Relaxed);
        s.lose(server.id, 1)
    }
}

/// Puts a request that found no idle worker (or others waiting) in line, unless it must give
/// up at once, and sleeps until [`State::offer`] hands it a worker or it must give up.
fn wait_in_line<T>(
    s: &mut MutexGuard<'_, State<T>>,
    started: Instant,
    timeout: Duration,
) -> Result<Lent<T>, NoServer> {
    let timed_out = || (started.elapsed() >= timeout).then_some(NoServer::TimedOut);
    if let Some(why) = s.hopeless().or_else(timed_out) {
        return Err(why);
    }
    let wake = WAKE.with(Arc::clone);
    s.in_line.push_back((started, Arc::clone(&wake)));
    let place = s.in_line.len();
    let mine = |s: &State<T>| s.handed.iter().position(|(w, _)| Arc::ptr_eq(w, &wake));
    let waiting = |s: &mut State<T>| mine(s).is_none() && s.hopeless().is_none();
    wake.wait_while_for(s, waiting, timeout.saturating_sub(started.elapsed()));
    let Some(i) = mine(s) else {
        s.in_line.retain(|(_, w)| !Arc::ptr_eq(w, &wake));
        return Err(s.hopeless().unwrap_or(NoServer::TimedOut));
    };
    let (_, (server, item, mut decision)) = s.handed.swap_remove(i);
    decision.position = Some(place);
    decision.waited = started.elapsed();
    Ok((server, item, decision))
}

/// The queue at one moment (how many workers each server has busy is its `in_flight`).
pub struct Snapshot {
    pub members: Vec<(u32, Membership)>,
    pub waiting: usize,
    pub longest_wait: Duration,
}

/// A worker of a server handed to one request. Give it back with [`Lease::release`]; if the
/// request broke its connection, drop the lease: that takes the connection out of the pool
/// (with the server, if it was its last), so a connection in an unknown state is never reused.
pub struct Lease<'q, T> {
    queue: &'q IdleQueue<T>,
    pub server: Arc<Backend>,
    item: Option<T>,
    /// How the choice was made, for the log and the dashboard.
    pub decision: Decision,
}

const HELD: &str = "a lease holds its item until released";

impl<T> Lease<'_, T> {
    /// The leased item (the worker's connection).
    pub fn item(&mut self) -> &mut T {
        self.item.as_mut().expect(HELD)
    }

    /// Returns the worker to the idle list: its connection is clean and reusable.
    pub fn release(self) {
        let queue = self.queue;
        let (server, item) = self.set_aside();
        queue.give_back(server, item);
    }

    /// Hands back the item while the worker stays counted, busy: for replacing its connection.
    /// End with [`IdleQueue::give_back`] (a new item) or [`IdleQueue::drop_connection`];
    /// meanwhile requests wait for the server instead of finding no server up.
    pub fn set_aside(mut self) -> (Arc<Backend>, T) {
        (Arc::clone(&self.server), self.item.take().expect(HELD))
    }
}

impl<T> Drop for Lease<'_, T> {
    fn drop(&mut self) {
        if self.item.take().is_some() {
            self.queue.drop_connection(&self.server);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{backend, by_name};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    fn queue(servers: &[(u32, f64)]) -> IdleQueue<u32> {
        let q = IdleQueue::new(by_name("power").unwrap());
        for &(id, secs) in servers {
            assert!(q.add(backend(id, secs, 0), id));
        }
        q
    }

    /// A queue of servers `(id, seconds, workers)`; worker `k` of server `id` is item
    /// `id * 100 + k`.
    fn queue_with_workers(servers: &[(u32, f64, usize)]) -> IdleQueue<u32> {
        let q = IdleQueue::new(by_name("power").unwrap());
        for &(id, secs, workers) in servers {
            let time = Duration::from_secs_f64(secs);
            let mut server = Backend::new(id, format!("127.0.0.1:{}", 5000 + id), time, false);
            server.workers = workers;
            let server = Arc::new(server);
            for k in 0..workers {
                assert!(q.add(Arc::clone(&server), id * 100 + k as u32));
            }
            assert!(!q.add(Arc::clone(&server), 99), "one connection per worker");
        }
        q
    }

    /// How many workers are free, how many servers are in the pool, how many requests wait.
    fn counts(q: &IdleQueue<u32>) -> (usize, usize, usize) {
        let s = q.lock();
        let free = s.members.values().map(|m| m.free.len()).sum();
        (free, s.members.len(), s.in_line.len())
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
        let waiting = counts(q).2;
        let thread = {
            let q = Arc::clone(q);
            std::thread::spawn(move || q.acquire(PATIENCE).map(|l| l.server.id))
        };
        wait_for("the waiter to join the line", || counts(q).2 > waiting);
        thread
    }

    /// Why `acquire` with no time to wait handed out nothing, asked on another thread: a
    /// regression that makes it wait for ever fails the test instead of hanging the suite.
    #[test]
    fn a_server_with_no_worker_never_joins() {
        let q = Arc::new(queue_with_workers(&[(1, 0.1, 0)]));
        assert_eq!(q.membership(1), None);
        assert_eq!(refused_at_once(&q), NoServer::NoneUp);
    }

    fn refused_at_once(q: &Arc<IdleQueue<u32>>) -> NoServer {
        let (tx, rx) = std::sync::mpsc::channel();
        let q = Arc::clone(q);
        std::thread::spawn(move || _ = tx.send(q.acquire(NOW).err()));
        match rx.recv_timeout(PATIENCE) {
            Ok(Some(why)) => why,
            Ok(None) => panic!("a server was handed out"),
            Err(_) => panic!("acquire with no time to wait did not return"),
        }
    }

    #[test]
    fn hands_out_fastest_first() {
        let q = Arc::new(queue(&[(1, 2.0), (2, 0.5), (3, 1.0)]));
        let a = q.acquire(NOW).unwrap();
        let b = q.acquire(NOW).unwrap();
        let c = q.acquire(NOW).unwrap();
        assert_eq!((a.server.id, b.server.id, c.server.id), (2, 3, 1));
        assert_eq!(refused_at_once(&q), NoServer::TimedOut);
        b.release();
        assert_eq!(q.acquire(NOW).unwrap().server.id, 3);
    }

    #[test]
    fn rotates_among_equal_power() {
        let q = queue(&[(1, 0.5), (2, 0.5), (3, 0.5), (4, 1.0)]);
        let mut order = Vec::new();
        for _ in 0..6 {
            let lease = q.acquire(NOW).unwrap();
            order.push(lease.server.id);
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
        let d = first.decision;
        assert_eq!((d.free, d.busy, d.position), (2, 0, None));
        let half = Duration::from_millis(500);
        assert_eq!((d.declared, d.measured, d.in_flight, d.served), (half, None, 0, 0));
        let second = q.acquire(NOW).unwrap();
        let d = second.decision;
        assert_eq!((d.free, d.busy), (1, 1));
        let waiter = {
            let q = Arc::clone(&q);
            std::thread::spawn(move || q.acquire(PATIENCE).map(|l| l.decision))
        };
        wait_for("the waiter to join the line", || counts(&q).2 == 1);
        assert_eq!(q.snapshot().waiting, 1);
        let took = Duration::from_millis(300);
        first.server.record_reply(took, took, 0, None);
        first.release();
        let decision = waiter.join().unwrap().unwrap();
        assert_eq!(decision.position, Some(1));
        assert!(decision.waited > Duration::ZERO, "{decision:?}");
        assert_eq!((decision.free, decision.busy), (1, 1));
        // The figures as they were when it was handed out: one reply served, measured.
        assert_eq!((decision.declared, decision.served), (half, 1));
        assert_eq!(decision.measured, Some(took));
    }

    #[test]
    fn a_lease_hands_out_the_servers_one_live_state() {
        let q = queue(&[(1, 0.5)]);
        let lease = q.acquire(NOW).unwrap();
        let took = Duration::from_millis(80);
        lease.server.record_reply(took, took, 0, None);
        lease.release();
        let lease = q.acquire(NOW).unwrap();
        assert_eq!(lease.server.measured(), Some(took));
        assert_eq!(lease.server.last_chosen.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn the_policy_ranks_by_the_measurement_the_status_page_shows() {
        let q = IdleQueue::new(by_name("measured").unwrap());
        let (liar, honest) = (backend(1, 0.01, 0), backend(2, 0.1, 0));
        assert!(q.add(Arc::clone(&liar), 1) && q.add(Arc::clone(&honest), 2));
        let lease = q.acquire(NOW).unwrap();
        assert_eq!(lease.server.id, 1);
        let slow = Duration::from_millis(500);
        lease.server.record_reply(slow, slow, 0, None);
        // Its connection breaks and it is reconnected: what was measured stays measured.
        drop(lease);
        assert!(q.add(Arc::clone(&liar), 1));
        assert_eq!(liar.measured(), Some(slow));
        assert_eq!(q.acquire(NOW).unwrap().server.id, 2);
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let q = queue(&[(1, 0.5)]);
        assert!(!q.add(backend(1, 0.1, 0), 99));
        assert_eq!(counts(&q), (1, 1, 0));
    }

    #[test]
    fn empty_pool_fails_at_once() {
        let q = queue(&[]);
        let started = Instant::now();
        assert_eq!(q.acquire(Duration::from_secs(10)).err().unwrap(), NoServer::NoneUp);
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
            wait_for("the waiter to join the line", || counts(&q).2 == n + 1);
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
        let mut held = q.acquire(NOW).unwrap();
        let waiter = spawn_waiter(&q);
        assert_eq!(*held.item(), 1);
        drop(held);
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
        assert!(q.add(Arc::clone(&server), 1));
        let _ = q.acquire(NOW).unwrap().set_aside();
        let waiter = spawn_waiter(&q);
        q.drop_connection(&server);
        assert_eq!(waiter.join().unwrap(), Err(NoServer::NoneUp));
    }

    #[test]
    fn retire_drains_a_busy_server() {
        // Server 1 has two workers, one busy: retiring it closes the free one now and the busy
        // one when its request ends, while server 2 stays in service.
        let q = queue_with_workers(&[(1, 0.5, 2), (2, 1.0, 1)]);
        let busy = q.acquire(NOW).unwrap();
        assert_eq!(busy.server.id, 1);
        assert_eq!(counts(&q), (2, 2, 0));
        assert!(q.retire(1));
        assert_eq!(q.membership(1), Some(Membership::Draining));
        assert_eq!(counts(&q), (1, 2, 0));
        let other = q.acquire(NOW).unwrap();
        assert_eq!(other.server.id, 2);
        other.release();
        busy.release();
        assert_eq!(q.membership(1), None);
        assert_eq!(counts(&q), (1, 1, 0));
        assert!(q.retire(2));
        assert_eq!(counts(&q), (0, 0, 0));
        assert_eq!(q.acquire(NOW).err().unwrap(), NoServer::NoneUp);
    }

    #[test]
    fn every_waiter_hears_at_once_when_the_last_active_server_goes() {
        let q = Arc::new(queue(&[(1, 0.5), (2, 1.0)]));
        let active = q.acquire(NOW).unwrap();
        let draining = q.acquire(NOW).unwrap();
        assert!(q.retire(2));
        let waiters = [spawn_waiter(&q), spawn_waiter(&q)];
        let started = Instant::now();
        drop(active);
        for w in waiters {
            assert_eq!(w.join().unwrap(), Err(NoServer::NoneUp));
        }
        assert!(started.elapsed() < Duration::from_secs(10));
        draining.release();
        assert_eq!(counts(&q), (0, 0, 0));
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
            q.returned_tx.send((Arc::clone(&lease.server), item)).unwrap();
        }
        drop(q.lock());
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
        assert_eq!(counts(&q), (0, 0, 0));
    }

    #[test]
    fn waiters_hear_at_once_when_the_last_servers_last_connection_breaks() {
        let q = Arc::new(queue(&[(1, 0.5)]));
        let broken = q.acquire(NOW).unwrap();
        let waiters = [spawn_waiter(&q), spawn_waiter(&q)];
        let started = Instant::now();
        drop(broken);
        for w in waiters {
            assert_eq!(w.join().unwrap(), Err(NoServer::NoneUp));
        }
        assert!(started.elapsed() < PATIENCE / 2, "{:?}", started.elapsed());
        assert_eq!(counts(&q), (0, 0, 0));
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
        assert_eq!(counts(&q), (1, 1, 0));
        assert_eq!(q.acquire(NOW).unwrap().server.id, 2);
    }

    #[test]
    fn a_waiter_that_times_out_passes_the_turn() {
        let q = Arc::new(queue(&[(1, 0.5)]));
        let held = q.acquire(NOW).unwrap();
        let impatient = {
            let q = Arc::clone(&q);
            std::thread::spawn(move || q.acquire(Duration::from_millis(50)).map(|l| l.server.id))
        };
        wait_for("the impatient waiter to join the line", || counts(&q).2 == 1);
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
        let started = Instant::now();
        assert_eq!(q.wait_for_members(2, PATIENCE), 2);
        assert!(started.elapsed() < PATIENCE, "still waiting after the join");
        joiner.join().unwrap();
        // Stopping ends the wait too (Ctrl-C during start-up).
        let stopper = {
            let q = Arc::clone(&q);
            std::thread::spawn(move || q.stop())
        };
        let started = Instant::now();
        assert_eq!(q.wait_for_members(3, PATIENCE), 2);
        assert!(started.elapsed() < PATIENCE, "still waiting after the stop");
        stopper.join().unwrap();
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
    fn hands_out_workers_by_power_never_more_than_a_server_has() {
        let q = Arc::new(queue_with_workers(&[(1, 0.2, 2), (2, 0.1, 3)]));
        let leases: Vec<_> = (0..5).map(|_| q.acquire(NOW).unwrap()).collect();
        let ids: Vec<u32> = leases.iter().map(|l| l.server.id).collect();
        // The faster server's three workers first, then the slower one's two; then none.
        assert_eq!(ids, [2, 2, 2, 1, 1]);
        assert_eq!(refused_at_once(&q), NoServer::TimedOut);
        let in_flight = |l: &Lease<'_, u32>| l.server.in_flight.load(Ordering::Relaxed);
        assert_eq!((in_flight(&leases[0]), in_flight(&leases[4])), (3, 2));
        let d = leases[4].decision;
        assert_eq!((d.free, d.busy), (1, 1), "server 2 was busy, one worker free");
        let mut leases = leases.into_iter();
        leases.next().unwrap().release();
        assert_eq!(q.acquire(NOW).unwrap().server.id, 2);
        // (That lease dropped: its connection is gone, server 2 keeps its other two.)
        assert_eq!(q.connections(2), 2);
        assert_eq!(counts(&q), (0, 2, 0));
    }

    #[test]
    fn a_freed_worker_goes_straight_to_the_first_in_line() {
        let q = Arc::new(queue_with_workers(&[(1, 0.1, 2)]));
        let held = [q.acquire(NOW).unwrap(), q.acquire(NOW).unwrap()];
        let waiter = spawn_waiter(&q);
        let [first, second] = held;
        first.release();
        // Handed over under the lock: not idle for a moment, so a newcomer cannot take it.
        assert_eq!(counts(&q).0, 0);
        assert_eq!(refused_at_once(&q), NoServer::TimedOut);
        assert_eq!(waiter.join().unwrap(), Ok(1));
        second.release();
        assert_eq!(counts(&q), (1, 1, 0), "the waiter's lease dropped: one connection left");
    }

    #[test]
    fn waiters_get_workers_first_come_first_served_whichever_frees_first() {
        let q = Arc::new(queue_with_workers(&[(1, 0.1, 2), (2, 0.3, 1)]));
        let mut held: Vec<_> = (0..3).map(|_| q.acquire(NOW).unwrap()).collect();
        // Carries the number of each waiter as it gets a worker.
        let (got_tx, got_rx) = crossbeam_channel::unbounded();
        let mut go = Vec::new();
        let mut threads = Vec::new();
        for n in 0..6 {
            // Carries the word to release the worker: each waiter holds it until told.
            let (go_tx, go_rx) = crossbeam_channel::bounded::<()>(1);
            let (q2, got) = (Arc::clone(&q), got_tx.clone());
            threads.push(std::thread::spawn(move || {
                let lease = q2.acquire(PATIENCE).unwrap();
                got.send(n).unwrap();
                go_rx.recv_timeout(PATIENCE).unwrap();
                lease.release();
            }));
            go.push(go_tx);
            wait_for("the waiter to join the line", || counts(&q).2 == n + 1);
        }
        let next = || got_rx.recv_timeout(PATIENCE).unwrap();
        // Workers of either server, freed in any order, go to the waiters in their order.
        held.swap(0, 2);
        for (n, lease) in held.into_iter().enumerate() {
            lease.release();
            assert_eq!(next(), n);
        }
        for (n, go) in go.iter().enumerate().take(3) {
            go.send(()).unwrap();
            assert_eq!(next(), n + 3);
        }
        for (n, t) in threads.into_iter().enumerate() {
            if n >= 3 {
                go[n].send(()).unwrap();
            }
            t.join().unwrap();
        }
        assert_eq!(counts(&q), (3, 2, 0));
    }

    #[test]
    fn stress_never_hands_a_worker_to_two_requests_or_loses_one() {
        const THREADS: usize = 16;
        const ROUNDS: usize = 2000;
        let servers = [(0, 0.1, 1), (1, 0.1, 2), (2, 0.2, 3), (3, 0.3, 4)];
        let q = Arc::new(queue_with_workers(&servers));
        // One flag per connection (item), one count per server.
        let in_use: Arc<Vec<AtomicBool>> =
            Arc::new((0..400).map(|_| AtomicBool::new(false)).collect());
        let busy: Arc<Vec<AtomicUsize>> = Arc::new((0..4).map(|_| AtomicUsize::new(0)).collect());
        let served = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let (q, in_use, busy, served) =
                    (Arc::clone(&q), Arc::clone(&in_use), Arc::clone(&busy), Arc::clone(&served));
                std::thread::spawn(move || {
                    // Half the threads are impatient: a timeout racing a hand-over must not
                    // lose the worker.
                    let patience = if t % 2 == 0 { PATIENCE } else { Duration::from_micros(50) };
                    for _ in 0..ROUNDS {
                        // A patient thread always gets a worker: its timeout is a lost worker
                        // or a missed wake-up, and fails at once rather than 2000 times over.
                        let mut lease = match q.acquire(patience) {
                            Ok(lease) => lease,
                            Err(_) if t % 2 == 1 => continue,
                            Err(e) => panic!("a patient waiter got no worker: {e:?}"),
                        };
                        let item = *lease.item() as usize;
                        let id = lease.server.id as usize;
                        assert_eq!(item / 100, id);
                        assert!(
                            !in_use[item].swap(true, Ordering::SeqCst),
                            "connection {item} handed to two requests"
                        );
                        let workers = lease.server.workers;
                        assert!(busy[id].fetch_add(1, Ordering::SeqCst) < workers);
                        assert!(lease.server.in_flight.load(Ordering::Relaxed) <= workers);
                        std::hint::spin_loop();
                        busy[id].fetch_sub(1, Ordering::SeqCst);
                        in_use[item].store(false, Ordering::SeqCst);
                        served.fetch_add(1, Ordering::Relaxed);
                        lease.release();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(served.load(Ordering::Relaxed) >= THREADS / 2 * ROUNDS);
        assert!(started.elapsed() < Duration::from_secs(60));
        // Every worker is back, idle, none counted in flight.
        assert_eq!(counts(&q), (10, 4, 0));
        let s = q.lock();
        assert!(s.members.values().all(|m| m.free.len() == m.backend.workers));
        assert!(s.members.values().all(|m| m.backend.in_flight.load(Ordering::Relaxed) == 0));
        assert!(s.handed.is_empty());
    }
}
