//! The translate mode's queue ([`FairQueue`]): bounded in total and per stream, served round
//! robin across streams (one job of a stream worked on at a time), and never holding a job that
//! can no longer be answered (past its deadline, its client gone): such jobs are dropped
//! whenever the queue is looked at, and at the latest at their deadline.
//!
//! One stream flooding the queue gets 503 once it holds `per_stream` jobs, while the others
//! still get in; and each free worker takes the next stream in turn, so a stream's long jobs
//! delay another stream's by at most one job.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// What the queue needs to know about a job.
pub(crate) trait Expiring {
    /// Whether the job can no longer be answered (past its deadline, cancelled).
    fn expired(&self, now: Instant) -> bool;
    /// When it expires at the latest.
    fn deadline(&self) -> Instant;
}

/// Why a job was not queued (it is handed back).
pub(crate) enum PushError<J> {
    /// The queue holds `capacity` jobs.
    Full(J),
    /// The job's stream holds `per_stream` jobs.
    StreamFull(J),
    /// The queue is closed (the server stops).
    Closed(J),
}

/// Longest wait of an idle worker before it looks for expired jobs again (for jobs whose
/// client left: their deadline is further).
const PURGE_INTERVAL: Duration = Duration::from_millis(250);

struct State<J> {
    /// Streams with queued jobs; the first that has no job worked on is served next, then
    /// goes to the back.
    turn: VecDeque<Arc<str>>,
    queued: HashMap<Arc<str>, VecDeque<J>>,
    /// Streams with a job being worked on.
    running: HashSet<Arc<str>>,
    len: usize,
    closed: bool,
    expired: u64,
}

impl<J: Expiring> State<J> {
    /// Moves the expired jobs out (to be dropped outside the lock).
    fn purge(&mut self, now: Instant, out: &mut Vec<J>) {
        let before = out.len();
        for jobs in self.queued.values_mut() {
            let mut i = 0;
            while i < jobs.len() {
                if jobs[i].expired(now) {
                    out.extend(jobs.remove(i));
                } else {
                    i += 1;
                }
            }
        }
        let gone = out.len() - before;
        if gone > 0 {
            self.len -= gone;
            self.expired += gone as u64;
            self.queued.retain(|_, jobs| !jobs.is_empty());
            let queued = &self.queued;
            self.turn.retain(|s| queued.contains_key(s));
        }
    }

    fn earliest_deadline(&self) -> Option<Instant> {
        self.queued
            .values()
            .flat_map(|jobs| jobs.iter().map(Expiring::deadline))
            .min()
    }
}

/// A bounded queue of jobs, fair across streams. See the module documentation.
pub(crate) struct FairQueue<J> {
    state: Mutex<State<J>>,
    changed: Condvar,
    capacity: usize,
    per_stream: usize,
}

impl<J: Expiring> FairQueue<J> {
    pub(crate) fn new(capacity: usize, per_stream: usize) -> Self {
        FairQueue {
            state: Mutex::new(State {
                turn: VecDeque::new(),
                queued: HashMap::new(),
                running: HashSet::new(),
                len: 0,
                closed: false,
                expired: 0,
            }),
            changed: Condvar::new(),
            capacity: capacity.max(1),
            per_stream: per_stream.clamp(1, capacity.max(1)),
        }
    }

    /// Queues `job` of `stream` (expired jobs are dropped first, so they never take room).
    pub(crate) fn push(&self, stream: &str, job: J) -> Result<(), PushError<J>> {
        let mut gone = Vec::new();
        let result = {
            let mut st = self.state.lock();
            st.purge(Instant::now(), &mut gone);
            if st.closed {
                Err(PushError::Closed(job))
            } else if st.queued.get(stream).map_or(0, VecDeque::len) >= self.per_stream {
                Err(PushError::StreamFull(job))
            } else if st.len >= self.capacity {
                Err(PushError::Full(job))
            } else {
                let key: Arc<str> = match st.queued.get_key_value(stream) {
                    Some((k, _)) => k.clone(),
                    None => {
                        let k: Arc<str> = Arc::from(stream);
                        st.turn.push_back(k.clone());
                        k
                    }
                };
                st.queued.entry(key).or_default().push_back(job);
                st.len += 1;
                Ok(())
            }
        };
        self.changed.notify_all();
        drop(gone);
        result
    }

    /// The next job to work on: the oldest of the first stream in turn that has no job worked
    /// on. Blocks until there is one; `None` once the queue is closed. The stream counts as
    /// worked on until [`FairQueue::done`].
    pub(crate) fn pop(&self) -> Option<(Arc<str>, J)> {
        let mut gone = Vec::new();
        let mut st = self.state.lock();
        loop {
            let now = Instant::now();
            st.purge(now, &mut gone);
            if !gone.is_empty() {
                // Dropping a job marks its fragment handled: not under the queue's lock.
                drop(st);
                gone.clear();
                st = self.state.lock();
                continue;
            }
            if st.closed {
                return None;
            }
            let running = &st.running;
            if let Some(i) = st.turn.iter().position(|s| !running.contains(s)) {
                let key = st.turn.remove(i).expect("position is in range");
                let jobs = st.queued.get_mut(&key).expect("streams in turn have jobs");
                let job = jobs.pop_front().expect("streams in turn have jobs");
                if jobs.is_empty() {
                    st.queued.remove(&key);
                } else {
                    st.turn.push_back(key.clone());
                }
                st.len -= 1;
                st.running.insert(key.clone());
                return Some((key, job));
            }
            let wake = st
                .earliest_deadline()
                .map_or(now + PURGE_INTERVAL, |d| d.min(now + PURGE_INTERVAL));
            self.changed.wait_until(&mut st, wake);
        }
    }

    /// The job of `stream` taken by [`FairQueue::pop`] is finished.
    pub(crate) fn done(&self, stream: &Arc<str>) {
        self.state.lock().running.remove(stream);
        self.changed.notify_all();
    }

    /// Refuses new jobs, drops the queued ones and wakes every waiting worker.
    pub(crate) fn close(&self) {
        let dropped: Vec<J> = {
            let mut st = self.state.lock();
            st.closed = true;
            st.turn.clear();
            st.len = 0;
            st.queued.drain().flat_map(|(_, jobs)| jobs).collect()
        };
        self.changed.notify_all();
        drop(dropped);
    }

    /// Jobs waiting now.
    pub(crate) fn len(&self) -> usize {
        self.state.lock().len
    }

    /// Counts a job taken by [`FairQueue::pop`] that had expired by the time its worker
    /// looked at it (never started).
    pub(crate) fn note_expired(&self) {
        self.state.lock().expired += 1;
    }

    /// Jobs dropped from the queue because they expired, since start.
    pub(crate) fn expired(&self) -> u64 {
        self.state.lock().expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct TestJob {
        name: &'static str,
        deadline: Instant,
        cancelled: Arc<AtomicBool>,
    }

    impl Expiring for TestJob {
        fn expired(&self, now: Instant) -> bool {
            now >= self.deadline || self.cancelled.load(Ordering::Relaxed)
        }
        fn deadline(&self) -> Instant {
            self.deadline
        }
    }

    fn job(name: &'static str) -> TestJob {
        TestJob {
            name,
            deadline: Instant::now() + Duration::from_secs(60),
            cancelled: Arc::default(),
        }
    }

    fn pop_name(q: &FairQueue<TestJob>) -> (String, &'static str) {
        let (s, j) = q.pop().unwrap();
        q.done(&s);
        (s.to_string(), j.name)
    }

    #[test]
    fn streams_take_turns_and_a_flood_is_bounded_per_stream() {
        let q = FairQueue::new(8, 3);
        for n in ["a0", "a1", "a2"] {
            assert!(q.push("a", job(n)).is_ok());
        }
        // a's fourth is refused while b still gets in.
        assert!(matches!(
            q.push("a", job("a3")),
            Err(PushError::StreamFull(_))
        ));
        assert!(q.push("b", job("b0")).is_ok());
        assert!(q.push("c", job("c0")).is_ok());
        assert!(q.push("b", job("b1")).is_ok());
        let order: Vec<&str> = (0..6).map(|_| pop_name(&q).1).collect();
        assert_eq!(order, ["a0", "b0", "c0", "a1", "b1", "a2"]);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn the_total_is_bounded() {
        let q = FairQueue::new(2, 2);
        assert!(q.push("a", job("a0")).is_ok());
        assert!(q.push("b", job("b0")).is_ok());
        assert!(matches!(q.push("c", job("c0")), Err(PushError::Full(_))));
    }

    #[test]
    fn a_stream_with_a_job_worked_on_waits_for_it() {
        let q = FairQueue::new(8, 4);
        q.push("a", job("a0")).ok();
        q.push("a", job("a1")).ok();
        q.push("b", job("b0")).ok();
        let (a, first) = q.pop().unwrap();
        assert_eq!(first.name, "a0");
        // a is busy: b goes first, then a1 only once a0 is done.
        let (b, second) = q.pop().unwrap();
        assert_eq!(second.name, "b0");
        q.done(&b);
        q.done(&a);
        assert_eq!(pop_name(&q), ("a".into(), "a1"));
    }

    #[test]
    fn expired_and_abandoned_jobs_take_no_room_and_are_never_served() {
        let q = FairQueue::new(2, 2);
        let past = TestJob {
            deadline: Instant::now(),
            ..job("late")
        };
        let abandoned = job("gone");
        let flag = abandoned.cancelled.clone();
        q.push("a", past).ok();
        q.push("b", abandoned).ok();
        flag.store(true, Ordering::Relaxed);
        // Both go when the queue is looked at: c and d fit.
        assert!(q.push("c", job("c0")).is_ok());
        assert!(q.push("d", job("d0")).is_ok());
        assert_eq!(q.expired(), 2);
        assert_eq!(pop_name(&q).1, "c0");
        assert_eq!(pop_name(&q).1, "d0");
    }

    #[test]
    fn close_wakes_the_workers_and_drops_the_queue() {
        let q = Arc::new(FairQueue::<TestJob>::new(4, 4));
        // An idle worker waits (or finds the queue closed already): either way it ends.
        let worker = {
            let q = q.clone();
            std::thread::spawn(move || q.pop().is_none())
        };
        q.close();
        assert!(worker.join().unwrap());
        assert!(matches!(q.push("a", job("a1")), Err(PushError::Closed(_))));
        let q = FairQueue::new(4, 4);
        q.push("a", job("a0")).ok();
        q.close();
        assert!(q.pop().is_none());
        assert_eq!(q.len(), 0);
    }
}
