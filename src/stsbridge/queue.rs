//! The fragment queue between `stsbridge`'s sink side, its request tasks and its source pad
//! task, without GStreamer objects: items in input order (fragments and serialized events), the
//! state of each fragment, the window of requests in flight, deadlines, delivery of answers and
//! flushing.
//!
//! One mutex guards the whole queue and one condition variable signals every change; both stay
//! inside this module. No method calls out (no callback, no bus message, no peer query) while
//! the lock is held, so the queue's lock is a leaf: holding it, nothing else is ever locked.

use std::collections::VecDeque;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

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

/// A fragment held in the queue. `P` is what the element keeps of it (buffer, id, format).
#[derive(Debug)]
pub struct Fragment<P, A> {
    pub seq: u64,
    /// When a pending fragment stops waiting for its answer.
    pub deadline: Instant,
    pub state: State<A>,
    pub payload: P,
}

/// What the source pad task pushes, in input order.
#[derive(Debug)]
pub enum Item<P, A, E> {
    Fragment(Fragment<P, A>),
    Event(E),
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

    fn earliest_deadline(&self) -> Option<Instant> {
        self.pending().map(|f| f.deadline).min()
    }

    fn expire(&mut self, now: Instant) {
        for item in self.items.iter_mut() {
            if let Item::Fragment(f) = item
                && !f.state.is_resolved()
                && f.deadline <= now
            {
                f.state = State::Expired;
            }
        }
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
        self.cond.notify_all();
    }

    /// Stops taking and giving items and aborts every request (flush start, shutdown). Items
    /// stay until [`start`](Self::start) or [`clear`](Self::clear).
    pub fn set_flushing(&self) {
        let mut q = self.inner.lock();
        q.stopped = Some(Stopped::Flushing);
        q.abort_tasks();
        self.cond.notify_all();
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
        self.cond.notify_all();
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
    /// deadline passes meanwhile. Returns the current generation. Waits with a deadline while
    /// any fragment is pending; otherwise the window is full of resolved fragments and only the
    /// source pad task (downstream) can free it.
    pub fn wait_for_room(&self, incoming: Incoming) -> Result<u64, Stopped> {
        let mut q = self.inner.lock();
        loop {
            q.check()?;
            q.expire(Instant::now());
            if !q.full(incoming) {
                return Ok(q.generation);
            }
            match q.earliest_deadline() {
                Some(d) => {
                    self.cond.wait_until(&mut q, d);
                }
                None => self.cond.wait(&mut q),
            }
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
        q.items.push_back(Item::Fragment(fragment));
        self.cond.notify_all();
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
                self.cond.notify_all();
                Delivery::Delivered
            }
            None => Delivery::Late,
        }
    }

    /// Blocks until the front item can go out and takes it: an event, or a resolved fragment
    /// (a pending one resolves at the latest at its deadline).
    pub fn next(&self) -> Result<Item<P, A, E>, Stopped> {
        let mut q = self.inner.lock();
        loop {
            if q.stopped == Some(Stopped::Flushing) {
                return Err(Stopped::Flushing);
            }
            q.expire(Instant::now());
            let wait = match q.items.front() {
                Some(Item::Fragment(f)) if !f.state.is_resolved() => Some(f.deadline),
                Some(_) => {
                    let item = q.items.pop_front().expect("front exists");
                    self.cond.notify_all();
                    return Ok(item);
                }
                None => None,
            };
            match wait {
                Some(d) => {
                    self.cond.wait_until(&mut q, d);
                }
                None => self.cond.wait(&mut q),
            }
        }
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
            match q.earliest_deadline() {
                Some(d) => {
                    self.cond.wait_until(&mut q, d);
                }
                None => self.cond.wait(&mut q),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    type Q = FragmentQueue<&'static str, u32, &'static str>;

    fn frag(seq: u64, deadline: Instant, state: State<u32>) -> Fragment<&'static str, u32> {
        Fragment {
            seq,
            deadline,
            state,
            payload: "pcm",
        }
    }

    fn started(max_in_flight: usize) -> Q {
        let q = Q::default();
        q.set_max_in_flight(max_in_flight);
        q.start();
        q
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
        let later = Instant::now() + Duration::from_secs(60);
        q.push_fragment(g, frag(0, later, State::Pending)).unwrap();
        assert!(q.push_event("tag"));
        q.push_fragment(g, frag(1, later, State::Skipped(Skip::Gap)))
            .unwrap();
        // The answer for 0 arrives: 0, then the event, then 1 go out.
        assert_eq!(q.deliver(g, 0, 7), Delivery::Delivered);
        match q.next().unwrap() {
            Item::Fragment(f) => {
                assert_eq!(f.seq, 0);
                assert!(matches!(f.state, State::Answered(7)));
            }
            Item::Event(_) => panic!("fragment 0 first"),
        }
        assert!(q.next_event_is(|e| *e == "tag"));
        assert!(matches!(q.next().unwrap(), Item::Event("tag")));
        assert!(!q.next_event_is(|_| true));
        assert!(matches!(
            q.next().unwrap(),
            Item::Fragment(Fragment {
                seq: 1,
                state: State::Skipped(Skip::Gap),
                ..
            })
        ));
        assert!(q.wait_drained());
    }

    #[test]
    fn the_deadline_expires_a_pending_fragment_and_its_answer_is_late() {
        let q = started(4);
        let g = q.check().unwrap();
        let soon = Instant::now() + Duration::from_millis(30);
        q.push_fragment(g, frag(0, soon, State::Pending)).unwrap();
        let t = Instant::now();
        let item = q.next().unwrap();
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

    #[test]
    fn a_flush_makes_answers_stale_and_empties_the_queue() {
        let q = started(4);
        let g = q.check().unwrap();
        let later = Instant::now() + Duration::from_secs(60);
        q.push_fragment(g, frag(0, later, State::Pending)).unwrap();
        q.set_flushing();
        assert_eq!(q.next().err(), Some(Stopped::Flushing));
        assert!(!q.wait_drained());
        q.start();
        let g2 = q.check().unwrap();
        assert_ne!(g, g2);
        assert_eq!(q.deliver(g, 0, 1), Delivery::Stale);
        // Pushing with the old generation is refused.
        assert_eq!(
            q.push_fragment(g, frag(1, later, State::Pending)),
            Err(Stopped::Flushing)
        );
        assert!(q.wait_drained());
    }

    #[test]
    fn the_window_holds_max_in_flight_pending_fragments() {
        let q = Arc::new(started(2));
        let g = q.check().unwrap();
        let later = Instant::now() + Duration::from_secs(60);
        q.push_fragment(g, frag(0, later, State::Pending)).unwrap();
        q.push_fragment(g, frag(1, later, State::Pending)).unwrap();
        // Skipped fragments still fit (they take no request).
        let skip = Incoming {
            sending: false,
            live: true,
        };
        assert!(q.wait_for_room(skip).is_ok());
        // A third request waits until an answer frees a place.
        let q2 = q.clone();
        let waiter = std::thread::spawn(move || {
            let t = Instant::now();
            q2.wait_for_room(LIVE_SEND).unwrap();
            t.elapsed()
        });
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(q.deliver(g, 1, 5), Delivery::Delivered);
        let waited = waiter.join().unwrap();
        assert!(waited >= Duration::from_millis(40), "{waited:?}");
        // Raising max-in-flight takes effect at once.
        q.push_fragment(g, frag(2, later, State::Pending)).unwrap();
        q.set_max_in_flight(3);
        assert!(q.wait_for_room(LIVE_SEND).is_ok());
    }

    #[test]
    fn non_live_backpressure_counts_resolved_fragments_too() {
        let q = started(2);
        let g = q.check().unwrap();
        let later = Instant::now() + Duration::from_secs(60);
        for seq in 0..2 {
            q.push_fragment(g, frag(seq, later, State::Skipped(Skip::Passthrough)))
                .unwrap();
        }
        let q = Arc::new(q);
        let q2 = q.clone();
        let waiter = std::thread::spawn(move || {
            q2.wait_for_room(Incoming {
                sending: false,
                live: false,
            })
        });
        std::thread::sleep(Duration::from_millis(30));
        assert!(!waiter.is_finished());
        let _ = q.next().unwrap();
        assert!(waiter.join().unwrap().is_ok());
    }

    #[test]
    fn a_window_wait_ends_at_the_earliest_deadline() {
        let q = started(1);
        let g = q.check().unwrap();
        let soon = Instant::now() + Duration::from_millis(30);
        q.push_fragment(g, frag(0, soon, State::Pending)).unwrap();
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
