//! The text pad's own queue ([`TextQueue`]): `text_src` is pushed from its own task, so a
//! subtitle consumer that is slow or never reads cannot hold up the audio. The source pad
//! task only enqueues, which never blocks; past `capacity` items the oldest *droppable* item
//! (a text buffer or a GAP) is dropped and counted. Events that carry the stream (stream-start,
//! caps, segment, EOS) are never dropped.

use std::collections::VecDeque;

use parking_lot::{Condvar, Mutex};

/// Items waiting for the text pad's task before the oldest droppable one is dropped.
pub const TEXT_QUEUE_CAPACITY: usize = 64;

struct State<T> {
    /// Items and whether each may be dropped.
    items: VecDeque<(T, bool)>,
    flushing: bool,
    dropped: u64,
}

/// A bounded, leaky queue between the source pad task (producer) and the text pad's task.
pub struct TextQueue<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
    capacity: usize,
}

impl<T> TextQueue<T> {
    /// A queue of `capacity` items; it starts flushing (nothing is kept until
    /// [`TextQueue::start`]).
    pub fn new(capacity: usize) -> Self {
        TextQueue {
            state: Mutex::new(State {
                items: VecDeque::new(),
                flushing: true,
                dropped: 0,
            }),
            ready: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    /// Queues `item` without ever blocking. When full, the oldest droppable item goes (or
    /// `item` itself when it is droppable and nothing older is). Returns the item dropped, if
    /// any, for the caller to release outside the lock. Ignored while flushing.
    pub fn push(&self, item: T, droppable: bool) -> Option<T> {
        let dropped = {
            let mut st = self.state.lock();
            if st.flushing {
                return Some(item);
            }
            let mut dropped = None;
            if st.items.len() >= self.capacity {
                match st.items.iter().position(|(_, d)| *d) {
                    Some(i) => dropped = st.items.remove(i).map(|(t, _)| t),
                    None if droppable => {
                        st.dropped += 1;
                        return Some(item);
                    }
                    // Only events that must go out are waiting: keep this one too.
                    None => {}
                }
                if dropped.is_some() {
                    st.dropped += 1;
                }
            }
            st.items.push_back((item, droppable));
            dropped
        };
        self.ready.notify_one();
        dropped
    }

    /// The next item; blocks until there is one. `None` once flushing.
    pub fn pop(&self) -> Option<T> {
        let mut st = self.state.lock();
        loop {
            if st.flushing {
                return None;
            }
            if let Some((item, _)) = st.items.pop_front() {
                return Some(item);
            }
            self.ready.wait(&mut st);
        }
    }

    /// Drops what waits and makes [`TextQueue::pop`] return `None` until [`TextQueue::start`].
    /// Returns the items dropped (a flush, not a loss: not counted).
    pub fn set_flushing(&self) -> Vec<T> {
        let items = {
            let mut st = self.state.lock();
            st.flushing = true;
            st.items.drain(..).map(|(t, _)| t).collect()
        };
        self.ready.notify_all();
        items
    }

    /// Accepts items again.
    pub fn start(&self) {
        self.state.lock().flushing = false;
    }

    /// Droppable items dropped because the queue was full, since creation.
    pub fn dropped(&self) -> u64 {
        self.state.lock().dropped
    }

    /// Items waiting now.
    pub fn len(&self) -> usize {
        self.state.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stuck_consumer_loses_text_never_events_and_the_producer_never_waits() {
        let q = TextQueue::new(3);
        q.start();
        assert!(q.push("start", false).is_none());
        for i in 0..10 {
            q.push(if i % 2 == 0 { "text" } else { "gap" }, true);
        }
        q.push("eos", false);
        // The stream-carrying events stay, in order; only the newest droppable ones are left.
        let mut got = Vec::new();
        while !q.is_empty() {
            got.push(q.pop().unwrap());
        }
        assert_eq!(got, ["start", "gap", "eos"]);
        assert_eq!(q.dropped(), 9);
    }

    #[test]
    fn flushing_empties_and_wakes_the_consumer() {
        let q = std::sync::Arc::new(TextQueue::<u32>::new(4));
        q.start();
        q.push(1, true);
        assert_eq!(q.pop(), Some(1));
        let consumer = {
            let q = q.clone();
            std::thread::spawn(move || q.pop())
        };
        q.set_flushing();
        assert_eq!(consumer.join().unwrap(), None);
        // Ignored while flushing, kept again once started.
        assert_eq!(q.push(2, false), Some(2));
        q.start();
        q.push(3, false);
        assert_eq!(q.pop(), Some(3));
        assert_eq!(q.dropped(), 0);
    }
}
