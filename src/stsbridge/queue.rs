//! The fragment queue between `stsbridge`'s sink side, its request tasks and its source pad
//! task, without GStreamer objects: items in input order (fragments and serialized events), the
//! state of each fragment, the window of requests in flight, deadlines, delivery of answers and
//! flushing.
//!
//! ## Deadlines
//! A live fragment's deadline is a running time on the pipeline clock
//! ([`Deadline::RunningTime`]): the queue cannot read that clock, so the source pad task does.
//! [`next`](FragmentQueue::next) tells it the running time to wait for
//! ([`Next::WaitClock`]); the task waits on a clock id and [`arm`](FragmentQueue::arm)s the
//! queue with that id's cancel, which every change that matters calls (an answer, a flush, an
//! earlier deadline, [`wake`](FragmentQueue::wake) on a state change). With a test clock the
//! test decides when a deadline passes. Only the source pad task expires these fragments; the
//! sink side waits on the condition variable for what it frees.
//!
//! Non-live fragments (files) have no clock running time to wait for: the pipeline runs as
//! fast as the service answers, and their deadline is a safety net against a request that
//! never ends ([`Deadline::Instant`], monotonic wall time, waited for with the condition
//! variable by anyone).
//!
//! One mutex guards the whole queue and one condition variable signals every change; both stay
//! inside this module. No method calls out (no callback, no bus message, no peer query) while
//! the lock is held, so the queue's lock is a leaf: holding it, nothing else is ever locked.
//! The cancel of a clock wait is called after the lock is released.

use std::collections::VecDeque;
use std::time::Instant;

use parking_lot::{Condvar, Mutex, MutexGuard};

/// Why a fragment was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// GAP buffer (silence filled in by dubchunker): nothing to translate.
    Gap,
    /// `bypass` was on.
    Bypass,
    /// No `url`: passthrough.
    Passthrough,
    /// The breaker was open.
    BreakerOpen,
}

/// Where a fragment is in its life. Every state but `Pending` is resolved: the fragment can go
/// out.
#[derive(Debug)]
pub enum State<A> {
    /// Sent: waiting for its answer until its deadline.
    Pending,
    /// Not sent; goes out as this skip says.
    Skipped(Skip),
    /// The request task's answer (success or failure).
    Answered(A),
    /// The deadline came first; an answer arriving later is late.
    Expired,
}

impl<A> State<A> {
    pub fn is_resolved(&self) -> bool {
        !matches!(self, State::Pending)
    }
}

/// When a pending fragment stops waiting for its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// A running time on the pipeline clock (live): it passes when the source pad task's clock
    /// wait says so.
    RunningTime(u64),
    /// A monotonic instant (non-live: the safety net of a file pipeline).
    Instant(Instant),
}

impl Deadline {
    /// Whether it passed at `now`, the pipeline clock then reading `now_rt` (running time;
    /// `None` when the clock is not running, which stops no running-time deadline passing).
    fn passed(self, now: Instant, now_rt: Option<u64>) -> bool {
        match self {
            Deadline::Instant(d) => d <= now,
            Deadline::RunningTime(rt) => now_rt.is_some_and(|n| rt <= n),
        }
    }
}

/// A fragment held in the queue. `P` is what the element keeps of it (buffer, id, format).
#[derive(Debug)]
pub struct Fragment<P, A> {
    pub seq: u64,
    /// When a pending fragment stops waiting for its answer.
    pub deadline: Deadline,
    pub state: State<A>,
    pub payload: P,
}

/// What the source pad task pushes, in input order.
#[derive(Debug)]
pub enum Item<P, A, E> {
    Fragment(Fragment<P, A>),
    Event(E),
}

/// What the source pad task does next.
#[derive(Debug)]
pub enum Next<P, A, E> {
    /// Push this item.
    Item(Item<P, A, E>),
    /// Wait on the pipeline clock until this running time (the earliest pending deadline),
    /// after [`arm`](FragmentQueue::arm)ing the queue with the wait's cancel; then ask again.
    WaitClock(u64),
    /// Something changed since the caller read the clock: read it again and ask again.
    Again,
}

/// Cancels the source pad task's clock wait (unschedules its clock id).
pub struct Cancel(Box<dyn FnOnce() + Send>);

impl Cancel {
    pub fn new(f: impl FnOnce() + Send + 'static) -> Self {
        Cancel(Box::new(f))
    }
}

impl std::fmt::Debug for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cancel")
    }
}

/// What became of a delivered answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The fragment was pending: it now holds the answer.
    Delivered,
    /// The fragment's deadline had passed (or it had already gone out): the answer is dropped.
    Late,
    /// The answer belongs to a flushed generation: dropped without counting.
    Stale,
}

/// Why the queue does not take or give items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Flushing, or not started.
    Flushing,
    /// The source pad task stopped on a flow error, which the sink side must return.
    Flow(gst::FlowError),
}

impl From<Stopped> for gst::FlowError {
    fn from(s: Stopped) -> gst::FlowError {
        match s {
            Stopped::Flushing => gst::FlowError::Flushing,
            Stopped::Flow(e) => e,
        }
    }
}

/// What the sink side is about to add, for the window check.
#[derive(Debug, Clone, Copy)]
pub struct Incoming {
    /// The fragment will be sent (takes a place among the requests in flight).
    pub sending: bool,
    /// Live pipelines hold resolved fragments without limit (downstream syncs to the clock);
    /// non-live ones hold at most `max_in_flight` fragments in all (backpressure).
    pub live: bool,
}

#[derive(Debug)]
struct Inner<P, A, E> {
    items: VecDeque<Item<P, A, E>>,
    stopped: Option<Stopped>,
    /// Bumped by every flush: answers of an older generation are stale.
    generation: u64,
    max_in_flight: usize,
    /// Every request task still running, aborted on flush and shutdown.
    tasks: Vec<tokio::task::AbortHandle>,
    /// Bumped by every change the source pad task must decide again for (see
    /// [`FragmentQueue::version`]).
    version: u64,
    /// The running time [`FragmentQueue::next`] last told the source pad task to wait for.
    clock_wait: Option<u64>,
    /// The cancel of that wait, once armed.
    cancel: Option<Cancel>,
    /// Threads blocked in a wait (tests wait for it instead of sleeping).
    #[cfg(test)]
    blocked: usize,
}

impl<P, A, E> Inner<P, A, E> {
    fn fragments(&self) -> impl Iterator<Item = &Fragment<P, A>> {
        self.items.iter().filter_map(|i| match i {
            Item::Fragment(f) => Some(f),
            Item::Event(_) => None,
        })
    }

    fn pending(&self) -> impl Iterator<Item = &Fragment<P, A>> {
        self.fragments().filter(|f| !f.state.is_resolved())
    }

    /// The earliest pending deadline of each kind: wall instant, clock running time.
    fn earliest_deadlines(&self) -> (Option<Instant>, Option<u64>) {
        let mut wall = None::<Instant>;
        let mut clock = None::<u64>;
        for f in self.pending() {
            match f.deadline {
                Deadline::Instant(d) => wall = Some(wall.map_or(d, |w| w.min(d))),
                Deadline::RunningTime(rt) => clock = Some(clock.map_or(rt, |c| c.min(rt))),
            }
        }
        (wall, clock)
    }

    /// Expires the pending fragments whose deadline passed; whether any did.
    fn expire(&mut self, now: Instant, now_rt: Option<u64>) -> bool {
        let mut any = false;
        for item in self.items.iter_mut() {
            if let Item::Fragment(f) = item
                && !f.state.is_resolved()
                && f.deadline.passed(now, now_rt)
            {
                f.state = State::Expired;
                any = true;
            }
        }
        any
    }

    /// A change the source pad task must decide again for: its clock wait is cancelled (by
    /// the caller, once the lock is released).
    #[must_use]
    fn changed(&mut self) -> Option<Cancel> {
        self.version += 1;
        self.clock_wait = None;
        self.cancel.take()
    }

    fn check(&self) -> Result<(), Stopped> {
        self.stopped.map_or(Ok(()), Err)
    }

    fn abort_tasks(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }

    fn full(&self, incoming: Incoming) -> bool {
        let held = self.fragments().count();
        held >= MAX_HELD
            || (incoming.sending && self.pending().count() >= self.max_in_flight)
            || (!incoming.live && held >= self.max_in_flight)
    }
}

/// Hard cap on fragments held (resolved ones waiting for downstream included).
pub const MAX_HELD: usize = 256;

/// The queue, shared by the sink side (chain and events), the request tasks (delivery) and the
/// source pad task (output).
#[derive(Debug)]
pub struct FragmentQueue<P, A, E> {
    inner: Mutex<Inner<P, A, E>>,
    cond: Condvar,
}

impl<P, A, E> Default for FragmentQueue<P, A, E> {
    fn default() -> Self {
        FragmentQueue {
            inner: Mutex::new(Inner {
                items: VecDeque::new(),
                stopped: Some(Stopped::Flushing),
                generation: 0,
                max_in_flight: 1,
                tasks: Vec::new(),
                version: 0,
                clock_wait: None,
                cancel: None,
                #[cfg(test)]
                blocked: 0,
            }),
            cond: Condvar::new(),
        }
    }
}

impl<P, A, E> FragmentQueue<P, A, E> {
    /// Empties the queue and starts taking items (pad activation, flush stop). Answers of
    /// requests sent before are stale from now on.
    pub fn start(&self) {
        let mut q = self.inner.lock();
        q.abort_tasks();
        q.items.clear();
        q.generation += 1;
        q.stopped = None;
        let cancel = q.changed();
        self.release(q, cancel);
    }

    /// Waits for a change, or until `until`.
    fn block(&self, q: &mut MutexGuard<'_, Inner<P, A, E>>, until: Option<Instant>) {
        #[cfg(test)]
        {
            q.blocked += 1;
            self.cond.notify_all();
        }
        match until {
            Some(d) => {
                self.cond.wait_until(q, d);
            }
            None => self.cond.wait(q),
        }
        #[cfg(test)]
        {
            q.blocked -= 1;
        }
    }

    /// Wakes every waiter, and hands the cancel (if any) back after the lock is released.
    fn release(&self, q: MutexGuard<'_, Inner<P, A, E>>, cancel: Option<Cancel>) {
        self.cond.notify_all();
        drop(q);
        if let Some(Cancel(f)) = cancel {
            f();
        }
    }

    /// Stops taking and giving items and aborts every request (flush start, shutdown). Items
    /// stay until [`start`](Self::start) or [`clear`](Self::clear).
    pub fn set_flushing(&self) {
        let mut q = self.inner.lock();
        q.stopped = Some(Stopped::Flushing);
        q.abort_tasks();
        let cancel = q.changed();
        self.release(q, cancel);
    }

    /// The pipeline clock started or stopped running for this element (a state change): the
    /// source pad task's clock wait, if any, is cancelled and it decides again.
    pub fn wake(&self) {
        let mut q = self.inner.lock();
        let cancel = q.changed();
        self.release(q, cancel);
    }

    /// Drops every item (after [`set_flushing`](Self::set_flushing), on shutdown).
    pub fn clear(&self) {
        self.inner.lock().items.clear();
    }

    /// The source pad task stopped on `err`: the sink side returns it from now on (the first
    /// error wins).
    pub fn set_flow_error(&self, err: gst::FlowError) {
        let mut q = self.inner.lock();
        if q.stopped.is_none() {
            q.stopped = Some(if err == gst::FlowError::Flushing {
                Stopped::Flushing
            } else {
                Stopped::Flow(err)
            });
        }
        let cancel = q.changed();
        self.release(q, cancel);
    }

    /// Requests in flight at once (`max-in-flight`); takes effect at once.
    pub fn set_max_in_flight(&self, n: usize) {
        self.inner.lock().max_in_flight = n.max(1);
        self.cond.notify_all();
    }

    /// Whether items are taken, and the generation they belong to.
    pub fn check(&self) -> Result<u64, Stopped> {
        let q = self.inner.lock();
        q.check().map(|()| q.generation)
    }

    /// Blocks until the window has room for a fragment, expiring pending fragments whose
    /// wall deadline passes meanwhile (running-time deadlines are the source pad task's to
    /// expire: it signals). Returns the current generation.
    pub fn wait_for_room(&self, incoming: Incoming) -> Result<u64, Stopped> {
        let mut q = self.inner.lock();
        loop {
            q.check()?;
            if q.expire(Instant::now(), None) {
                self.cond.notify_all();
            }
            if !q.full(incoming) {
                return Ok(q.generation);
            }
            let until = q.earliest_deadlines().0;
            self.block(&mut q, until);
        }
    }

    /// Adds a fragment at the back. `generation` is what [`wait_for_room`](Self::wait_for_room)
    /// returned: a flush in between makes it stale and it is not added.
    pub fn push_fragment(&self, generation: u64, fragment: Fragment<P, A>) -> Result<(), Stopped> {
        let mut q = self.inner.lock();
        q.check()?;
        if q.generation != generation {
            return Err(Stopped::Flushing);
        }
        // A pending fragment due before the running time the source pad task waits for (a
        // lower `latency`) changes its wait.
        let earlier = match (
            fragment.state.is_resolved(),
            fragment.deadline,
            q.clock_wait,
        ) {
            (false, Deadline::RunningTime(rt), Some(waiting)) => rt < waiting,
            _ => false,
        };
        q.items.push_back(Item::Fragment(fragment));
        let cancel = if earlier { q.changed() } else { None };
        self.release(q, cancel);
        Ok(())
    }

    /// Adds a serialized event at the back. False when flushing.
    pub fn push_event(&self, event: E) -> bool {
        let mut q = self.inner.lock();
        if q.stopped == Some(Stopped::Flushing) {
            return false;
        }
        q.items.push_back(Item::Event(event));
        self.cond.notify_all();
        true
    }

    /// Keeps a request task's handle so a flush can abort it.
    pub fn add_task(&self, handle: tokio::task::AbortHandle) {
        let mut q = self.inner.lock();
        q.tasks.retain(|t| !t.is_finished());
        q.tasks.push(handle);
    }

    /// A request task's answer for fragment `seq` of `generation`.
    pub fn deliver(&self, generation: u64, seq: u64, answer: A) -> Delivery {
        let mut q = self.inner.lock();
        if q.generation != generation {
            return Delivery::Stale;
        }
        let slot = q.items.iter_mut().find_map(|i| match i {
            Item::Fragment(f) if f.seq == seq && !f.state.is_resolved() => Some(f),
            _ => None,
        });
        match slot {
            Some(f) => {
                f.state = State::Answered(answer);
                let cancel = q.changed();
                self.release(q, cancel);
                Delivery::Delivered
            }
            None => Delivery::Late,
        }
    }

    /// What the source pad task must hear about: read before the clock, passed to
    /// [`next`](Self::next) and [`arm`](Self::arm), so that a change in between (an answer,
    /// a state change) is never missed.
    pub fn version(&self) -> u64 {
        self.inner.lock().version
    }

    /// What the source pad task does next. `now_rt` is the pipeline clock's running time (read
    /// after [`version`](Self::version) gave `seen`), `None` when the clock is not running
    /// (not PLAYING, no clock): running-time deadlines then wait for a change.
    ///
    /// Gives the front item once it can go out (an event, or a resolved fragment); else, when
    /// a pending fragment's deadline is a running time and the clock runs, the earliest such
    /// deadline to wait for on the clock; else blocks (until the earliest wall deadline, or a
    /// change). Returns [`Next::Again`] when a change came since `seen`.
    pub fn next(&self, now_rt: Option<u64>, seen: u64) -> Result<Next<P, A, E>, Stopped> {
        let mut q = self.inner.lock();
        loop {
            if q.stopped == Some(Stopped::Flushing) {
                return Err(Stopped::Flushing);
            }
            if q.version != seen {
                return Ok(Next::Again);
            }
            if q.expire(Instant::now(), now_rt) {
                // The sink side may wait for the room.
                self.cond.notify_all();
            }
            match q.items.front() {
                Some(Item::Fragment(f)) if !f.state.is_resolved() => {}
                Some(_) => {
                    let item = q.items.pop_front().expect("front exists");
                    self.cond.notify_all();
                    return Ok(Next::Item(item));
                }
                None => {}
            }
            let (wall, clock) = q.earliest_deadlines();
            if let (Some(rt), Some(_)) = (clock, now_rt) {
                q.clock_wait = Some(rt);
                return Ok(Next::WaitClock(rt));
            }
            self.block(&mut q, wall);
        }
    }

    /// Keeps `cancel`, the cancel of the source pad task's clock wait for what
    /// [`next`](Self::next) gave it with `seen`. False when the queue changed since: then
    /// `cancel` is dropped and the task must not wait (it asks again).
    pub fn arm(&self, seen: u64, cancel: Cancel) -> bool {
        let mut q = self.inner.lock();
        if q.version != seen || q.stopped == Some(Stopped::Flushing) {
            return false;
        }
        q.cancel = Some(cancel);
        true
    }

    /// The source pad task's clock wait ended: its cancel is dropped.
    pub fn disarm(&self) {
        let mut q = self.inner.lock();
        q.cancel = None;
        q.clock_wait = None;
    }

    /// Whether the next item to go out is an event that `matches` (e.g. EOS right after the
    /// fragment just taken).
    pub fn next_event_is(&self, matches: impl FnOnce(&E) -> bool) -> bool {
        match self.inner.lock().items.front() {
            Some(Item::Event(e)) => matches(e),
            _ => false,
        }
    }

    /// Blocks until every held item has gone out (serialized queries must not overtake them).
    /// False when flushing.
    pub fn wait_drained(&self) -> bool {
        let mut q = self.inner.lock();
        loop {
            if q.stopped == Some(Stopped::Flushing) {
                return false;
            }
            if q.items.is_empty() {
                return true;
            }
            // Running-time deadlines are expired by the source pad task, which signals.
            let until = q.earliest_deadlines().0;
            self.block(&mut q, until);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;

    type Q = FragmentQueue<&'static str, u32, &'static str>;

    fn frag(seq: u64, deadline: Deadline, state: State<u32>) -> Fragment<&'static str, u32> {
        Fragment {
            seq,
            deadline,
            state,
            payload: "pcm",
        }
    }

    fn wall(after: Duration) -> Deadline {
        Deadline::Instant(Instant::now() + after)
    }

    const LATER: Duration = Duration::from_secs(60);

    fn started(max_in_flight: usize) -> Q {
        let q = Q::default();
        q.set_max_in_flight(max_in_flight);
        q.start();
        q
    }

    impl Q {
        /// The next item, the clock not running (wall deadlines only).
        fn next_item(&self) -> Result<Item<&'static str, u32, &'static str>, Stopped> {
            loop {
                match self.next(None, self.version())? {
                    Next::Item(i) => return Ok(i),
                    Next::Again => continue,
                    Next::WaitClock(rt) => panic!("a clock wait until {rt} without a clock"),
                }
            }
        }

        /// Blocks until `n` threads wait in the queue.
        fn until_blocked(&self, n: usize) {
            let mut q = self.inner.lock();
            while q.blocked < n {
                self.cond.wait(&mut q);
            }
        }
    }

    /// A cancel that counts its calls.
    fn counting() -> (Arc<AtomicUsize>, impl Fn() -> Cancel) {
        let n = Arc::new(AtomicUsize::new(0));
        let m = n.clone();
        (n, move || {
            let m = m.clone();
            Cancel::new(move || {
                m.fetch_add(1, Ordering::SeqCst);
            })
        })
    }

    const LIVE_SEND: Incoming = Incoming {
        sending: true,
        live: true,
    };

    #[test]
    fn not_started_is_flushing() {
        let q = Q::default();
        assert_eq!(q.check(), Err(Stopped::Flushing));
        assert!(!q.push_event("caps"));
        assert_eq!(q.wait_for_room(LIVE_SEND), Err(Stopped::Flushing));
    }

    #[test]
    fn items_go_out_in_order_once_resolved() {
        let q = started(4);
        let g = q.check().unwrap();
        q.push_fragment(g, frag(0, wall(LATER), State::Pending))
            .unwrap();
        assert!(q.push_event("tag"));
        q.push_fragment(g, frag(1, wall(LATER), State::Skipped(Skip::Gap)))
            .unwrap();
        // The answer for 0 arrives: 0, then the event, then 1 go out.
        assert_eq!(q.deliver(g, 0, 7), Delivery::Delivered);
        match q.next_item().unwrap() {
            Item::Fragment(f) => {
                assert_eq!(f.seq, 0);
                assert!(matches!(f.state, State::Answered(7)));
            }
            Item::Event(_) => panic!("fragment 0 first"),
        }
        assert!(q.next_event_is(|e| *e == "tag"));
        assert!(matches!(q.next_item().unwrap(), Item::Event("tag")));
        assert!(!q.next_event_is(|_| true));
        assert!(matches!(
            q.next_item().unwrap(),
            Item::Fragment(Fragment {
                seq: 1,
                state: State::Skipped(Skip::Gap),
                ..
            })
        ));
        assert!(q.wait_drained());
    }

    /// The non-live safety net is wall time.
    #[test]
    fn a_wall_deadline_expires_a_pending_fragment_and_its_answer_is_late() {
        let q = started(4);
        let g = q.check().unwrap();
        q.push_fragment(g, frag(0, wall(Duration::from_millis(30)), State::Pending))
            .unwrap();
        let t = Instant::now();
        let item = q.next_item().unwrap();
        assert!(t.elapsed() >= Duration::from_millis(25));
        assert!(matches!(
            item,
            Item::Fragment(Fragment {
                state: State::Expired,
                ..
            })
        ));
        assert_eq!(q.deliver(g, 0, 1), Delivery::Late);
    }

    /// A running-time deadline is the source pad task's clock wait: nothing expires it but
    /// the clock's time, however long the task waits.
    #[test]
    fn a_running_time_deadline_is_a_clock_wait_and_passes_only_on_the_clock() {
        let q = started(4);
        let g = q.check().unwrap();
        q.push_fragment(g, frag(0, Deadline::RunningTime(500), State::Pending))
            .unwrap();
        q.push_fragment(g, frag(1, Deadline::RunningTime(700), State::Pending))
            .unwrap();
        let v = q.version();
        assert!(matches!(q.next(Some(100), v), Ok(Next::WaitClock(500))));
        assert!(matches!(q.next(Some(499), v), Ok(Next::WaitClock(500))));
        // The clock at 500: 0 expires and goes out, 1 is waited for next.
        match q.next(Some(500), v).unwrap() {
            Next::Item(Item::Fragment(f)) => {
                assert_eq!(f.seq, 0);
                assert!(matches!(f.state, State::Expired));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(q.next(Some(500), v), Ok(Next::WaitClock(700))));
        assert_eq!(q.deliver(g, 0, 1), Delivery::Late);
        // Its answer in time resolves 1 without the clock.
        assert_eq!(q.deliver(g, 1, 2), Delivery::Delivered);
        let v = q.version();
        assert!(matches!(
            q.next(Some(600), v),
            Ok(Next::Item(Item::Fragment(Fragment {
                seq: 1,
                state: State::Answered(2),
                ..
            })))
        ));
    }

    #[test]
    fn an_answer_a_flush_or_a_wake_cancels_the_clock_wait() {
        let (calls, cancel) = counting();
        let q = started(4);
        let g = q.check().unwrap();
        q.push_fragment(g, frag(0, Deadline::RunningTime(500), State::Pending))
            .unwrap();
        q.push_fragment(g, frag(1, Deadline::RunningTime(600), State::Pending))
            .unwrap();
        // An answer.
        let v = q.version();
        assert!(matches!(q.next(Some(0), v), Ok(Next::WaitClock(500))));
        assert!(q.arm(v, cancel()));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert_eq!(q.deliver(g, 0, 7), Delivery::Delivered);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(matches!(q.next(Some(0), v), Ok(Next::Again)));
        q.disarm();
        let v = q.version();
        assert!(matches!(q.next(Some(0), v), Ok(Next::Item(_))));
        // A state change (the clock stops or starts running).
        assert!(matches!(q.next(Some(0), v), Ok(Next::WaitClock(600))));
        assert!(q.arm(v, cancel()));
        q.wake();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        q.disarm();
        // A flush.
        let v = q.version();
        assert!(matches!(q.next(Some(0), v), Ok(Next::WaitClock(600))));
        assert!(q.arm(v, cancel()));
        q.set_flushing();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert!(matches!(q.next(Some(0), v), Err(Stopped::Flushing)));
        // Disarmed: the cancel is dropped, not called.
        let v = q.version();
        assert!(!q.arm(v, cancel()), "no clock wait while flushing");
        q.start();
        let v = q.version();
        assert!(q.arm(v, cancel()));
        q.disarm();
        q.wake();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_change_before_the_wait_is_armed_is_not_missed() {
        let (calls, cancel) = counting();
        let q = started(4);
        let g = q.check().unwrap();
        q.push_fragment(g, frag(0, Deadline::RunningTime(500), State::Pending))
            .unwrap();
        let v = q.version();
        assert!(matches!(q.next(Some(0), v), Ok(Next::WaitClock(500))));
        // The answer comes between the decision and the wait.
        assert_eq!(q.deliver(g, 0, 7), Delivery::Delivered);
        assert!(!q.arm(v, cancel()), "the task must not wait");
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn an_earlier_deadline_changes_the_wait_a_later_one_does_not() {
        let (calls, cancel) = counting();
        let q = started(4);
        let g = q.check().unwrap();
        q.push_fragment(g, frag(0, Deadline::RunningTime(500), State::Pending))
            .unwrap();
        let v = q.version();
        assert!(matches!(q.next(Some(0), v), Ok(Next::WaitClock(500))));
        assert!(q.arm(v, cancel()));
        q.push_fragment(g, frag(1, Deadline::RunningTime(900), State::Pending))
            .unwrap();
        q.push_fragment(
            g,
            frag(2, Deadline::RunningTime(600), State::Skipped(Skip::Gap)),
        )
        .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert!(matches!(q.next(Some(0), v), Ok(Next::WaitClock(500))));
        // `latency` lowered: a fragment due before the one waited for.
        q.push_fragment(g, frag(3, Deadline::RunningTime(300), State::Pending))
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        q.disarm();
        let v = q.version();
        assert!(matches!(q.next(Some(0), v), Ok(Next::WaitClock(300))));
        // At 300 only fragment 3 expires; it waits behind 0.
        assert!(matches!(q.next(Some(300), v), Ok(Next::WaitClock(500))));
    }

    #[test]
    fn without_a_running_clock_the_task_waits_for_a_change() {
        let q = Arc::new(started(4));
        let g = q.check().unwrap();
        q.push_fragment(g, frag(0, Deadline::RunningTime(500), State::Pending))
            .unwrap();
        let q2 = q.clone();
        let task = std::thread::spawn(move || {
            let v = q2.version();
            // Paused: however late it is, no running-time deadline passes.
            matches!(q2.next(None, v), Ok(Next::Again))
        });
        q.until_blocked(1);
        q.wake();
        assert!(task.join().unwrap());
    }

    #[test]
    fn the_source_task_expiring_a_fragment_frees_the_window() {
        let q = Arc::new(started(1));
        let g = q.check().unwrap();
        q.push_fragment(g, frag(0, Deadline::RunningTime(500), State::Pending))
            .unwrap();
        let q2 = q.clone();
        let chain = std::thread::spawn(move || q2.wait_for_room(LIVE_SEND));
        q.until_blocked(1);
        let v = q.version();
        assert!(matches!(q.next(Some(500), v), Ok(Next::Item(_))));
        assert_eq!(chain.join().unwrap(), Ok(g));
    }

    #[test]
    fn a_flush_makes_answers_stale_and_empties_the_queue() {
        let q = started(4);
        let g = q.check().unwrap();
        q.push_fragment(g, frag(0, wall(LATER), State::Pending))
            .unwrap();
        q.set_flushing();
        assert_eq!(q.next_item().err(), Some(Stopped::Flushing));
        assert!(!q.wait_drained());
        q.start();
        let g2 = q.check().unwrap();
        assert_ne!(g, g2);
        assert_eq!(q.deliver(g, 0, 1), Delivery::Stale);
        // Pushing with the old generation is refused.
        assert_eq!(
            q.push_fragment(g, frag(1, wall(LATER), State::Pending)),
            Err(Stopped::Flushing)
        );
        assert!(q.wait_drained());
    }

    #[test]
    fn the_window_holds_max_in_flight_pending_fragments() {
        let q = Arc::new(started(2));
        let g = q.check().unwrap();
        q.push_fragment(g, frag(0, wall(LATER), State::Pending))
            .unwrap();
        q.push_fragment(g, frag(1, wall(LATER), State::Pending))
            .unwrap();
        // Skipped fragments still fit (they take no request).
        let skip = Incoming {
            sending: false,
            live: true,
        };
        assert!(q.wait_for_room(skip).is_ok());
        // A third request waits until an answer frees a place.
        let delivered = Arc::new(AtomicBool::new(false));
        let (q2, d2) = (q.clone(), delivered.clone());
        let waiter = std::thread::spawn(move || {
            q2.wait_for_room(LIVE_SEND).unwrap();
            d2.load(Ordering::SeqCst)
        });
        q.until_blocked(1);
        delivered.store(true, Ordering::SeqCst);
        assert_eq!(q.deliver(g, 1, 5), Delivery::Delivered);
        assert!(waiter.join().unwrap(), "room only after the answer");
        // Raising max-in-flight takes effect at once.
        q.push_fragment(g, frag(2, wall(LATER), State::Pending))
            .unwrap();
        q.set_max_in_flight(3);
        assert!(q.wait_for_room(LIVE_SEND).is_ok());
    }

    #[test]
    fn non_live_backpressure_counts_resolved_fragments_too() {
        let q = started(2);
        let g = q.check().unwrap();
        for seq in 0..2 {
            q.push_fragment(g, frag(seq, wall(LATER), State::Skipped(Skip::Passthrough)))
                .unwrap();
        }
        let q = Arc::new(q);
        let taken = Arc::new(AtomicBool::new(false));
        let (q2, t2) = (q.clone(), taken.clone());
        let waiter = std::thread::spawn(move || {
            let r = q2.wait_for_room(Incoming {
                sending: false,
                live: false,
            });
            (r, t2.load(Ordering::SeqCst))
        });
        q.until_blocked(1);
        taken.store(true, Ordering::SeqCst);
        let _ = q.next_item().unwrap();
        let (r, after) = waiter.join().unwrap();
        assert!(r.is_ok());
        assert!(after, "room only once the source pad task took one");
    }

    #[test]
    fn a_window_wait_ends_at_the_earliest_wall_deadline() {
        let q = started(1);
        let g = q.check().unwrap();
        q.push_fragment(g, frag(0, wall(Duration::from_millis(30)), State::Pending))
            .unwrap();
        let t = Instant::now();
        q.wait_for_room(LIVE_SEND).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(25));
    }

    #[test]
    fn a_flow_error_reaches_the_sink_side() {
        let q = started(1);
        q.set_flow_error(gst::FlowError::NotLinked);
        assert_eq!(q.check(), Err(Stopped::Flow(gst::FlowError::NotLinked)));
        assert_eq!(
            gst::FlowError::from(q.wait_for_room(LIVE_SEND).unwrap_err()),
            gst::FlowError::NotLinked
        );
        // The first error wins; events are still taken (EOS must reach the task's pause).
        q.set_flow_error(gst::FlowError::Error);
        assert_eq!(q.check(), Err(Stopped::Flow(gst::FlowError::NotLinked)));
        assert!(q.push_event("eos"));
    }
}
