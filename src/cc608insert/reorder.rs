//! Presentation order of frames that arrive in decode order. No GStreamer here.
//!
//! Caption data must follow presentation order (PTS) while frames arrive and leave in decode
//! order (DTS). A frame's place in presentation order is known once no frame still to come can
//! be presented before it: every later frame has PTS ≥ its DTS ≥ the newest DTS seen, so a held
//! frame is *final* once its PTS ≤ the newest DTS. [`Reorder`] holds items in arrival order,
//! hands out final frames in PTS order to be given their caption data, and releases items from
//! the front once they have it. Without B-frames (PTS = DTS) every frame is final on arrival
//! and nothing waits.

use std::collections::VecDeque;

#[derive(Debug)]
struct Entry<T, D> {
    item: T,
    /// PTS of a frame; `None` for an event (goes out in order, needs nothing).
    pts: Option<u64>,
    data: Option<D>,
}

/// Items in arrival order; frames get data `D` in presentation order.
#[derive(Debug)]
pub struct Reorder<T, D> {
    queue: VecDeque<Entry<T, D>>,
    /// Newest DTS seen (PTS where a frame has no DTS).
    newest_dts: Option<u64>,
    /// Number of items removed from the front so far: keys are absolute positions.
    popped: u64,
}

impl<T, D> Default for Reorder<T, D> {
    fn default() -> Self {
        Reorder {
            queue: VecDeque::new(),
            newest_dts: None,
            popped: 0,
        }
    }
}

/// A frame to give data to: its key and PTS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    pub key: u64,
    pub pts: u64,
}

impl<T, D> Reorder<T, D> {
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// A frame, with its PTS and DTS (stream times; a frame without PTS takes its DTS, one
    /// with neither takes the newest DTS).
    pub fn push_frame(&mut self, item: T, pts: Option<u64>, dts: Option<u64>) {
        let pts = pts.or(dts).or(self.newest_dts).unwrap_or(0);
        let dts = dts.unwrap_or(pts).min(pts);
        self.newest_dts = Some(self.newest_dts.map_or(dts, |d| d.max(dts)));
        self.queue.push_back(Entry {
            item,
            pts: Some(pts),
            data: None,
        });
    }

    /// An event or anything else that keeps its place and needs no data.
    pub fn push_other(&mut self, item: T) {
        self.queue.push_back(Entry {
            item,
            pts: None,
            data: None,
        });
    }

    /// The final frame without data that comes first in presentation order, if any. With
    /// `all`, every frame counts as final (end of stream).
    pub fn next_due(&self, all: bool) -> Option<Due> {
        let limit = if all { u64::MAX } else { self.newest_dts? };
        self.queue
            .iter()
            .enumerate()
            .filter(|(_, e)| e.data.is_none())
            .filter_map(|(i, e)| e.pts.map(|p| (i, p)))
            .filter(|(_, p)| *p <= limit)
            .min_by_key(|(i, p)| (*p, *i))
            .map(|(i, pts)| Due {
                key: self.popped + i as u64,
                pts,
            })
    }

    /// Gives the frame `key` its data.
    pub fn assign(&mut self, key: u64, data: D) {
        if let Some(i) = key.checked_sub(self.popped)
            && let Some(e) = self.queue.get_mut(i as usize)
        {
            e.data = Some(data);
        }
    }

    /// Items ready to go out, from the front: events, and frames with their data.
    pub fn pop_ready(&mut self) -> Vec<(T, Option<D>)> {
        let mut out = Vec::new();
        while let Some(front) = self.queue.front() {
            if front.pts.is_some() && front.data.is_none() {
                break;
            }
            let e = self.queue.pop_front().expect("front");
            self.popped += 1;
            out.push((e.item, e.data));
        }
        out
    }

    /// Everything held, in arrival order (flush).
    pub fn clear(&mut self) -> Vec<T> {
        self.newest_dts = None;
        self.popped += self.queue.len() as u64;
        self.queue.drain(..).map(|e| e.item).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds frames (name, pts, dts) and assigns each due frame a sequence number in the order
    /// they come due; returns (name, sequence) in output order.
    fn run(frames: &[(&'static str, u64, u64)]) -> Vec<(&'static str, u32)> {
        let mut r: Reorder<&'static str, u32> = Reorder::default();
        let mut seq = 0;
        let mut out = Vec::new();
        let mut step = |r: &mut Reorder<_, _>, all: bool| {
            while let Some(d) = r.next_due(all) {
                r.assign(d.key, seq);
                seq += 1;
            }
            for (name, data) in r.pop_ready() {
                out.push((name, data.unwrap()));
            }
        };
        for &(name, pts, dts) in frames {
            r.push_frame(name, Some(pts), Some(dts));
            step(&mut r, false);
        }
        step(&mut r, true);
        out
    }

    #[test]
    fn without_b_frames_nothing_waits() {
        let mut r: Reorder<u32, u32> = Reorder::default();
        for n in 0..5u64 {
            r.push_frame(n as u32, Some(n * 40), Some(n * 40));
            let d = r.next_due(false).unwrap();
            assert_eq!(d.pts, n * 40);
            r.assign(d.key, 7);
            assert_eq!(r.pop_ready(), vec![(n as u32, Some(7))]);
        }
    }

    #[test]
    fn b_frames_get_data_in_presentation_order() {
        // Decode order I0 P3 B1 B2 P6 B4 B5 (pts in frame units, dts one frame behind).
        let f = |n: u64| n * 40;
        let frames = [
            ("I0", f(1), f(0)),
            ("P3", f(4), f(1)),
            ("B1", f(2), f(2)),
            ("B2", f(3), f(3)),
            ("P6", f(7), f(4)),
            ("B4", f(5), f(5)),
            ("B5", f(6), f(6)),
        ];
        let out = run(&frames);
        // Output keeps decode order; data follows presentation order.
        assert_eq!(
            out,
            vec![
                ("I0", 0),
                ("P3", 3),
                ("B1", 1),
                ("B2", 2),
                ("P6", 6),
                ("B4", 4),
                ("B5", 5)
            ]
        );
    }

    #[test]
    fn events_keep_their_place() {
        let mut r: Reorder<&str, u8> = Reorder::default();
        r.push_frame("I", Some(40), Some(0));
        r.push_other("tag");
        r.push_frame("P", Some(120), Some(40));
        // I (pts 40) is final (newest dts 40); P is not.
        let d = r.next_due(false).unwrap();
        assert_eq!(d.pts, 40);
        r.assign(d.key, 1);
        assert_eq!(r.next_due(false), None);
        assert_eq!(r.pop_ready(), vec![("I", Some(1)), ("tag", None)]);
        let d = r.next_due(true).unwrap();
        r.assign(d.key, 2);
        assert_eq!(r.pop_ready(), vec![("P", Some(2))]);
        assert!(r.is_empty());
    }

    #[test]
    fn clear_forgets_everything() {
        let mut r: Reorder<u8, u8> = Reorder::default();
        r.push_frame(1, Some(80), Some(0));
        r.push_frame(2, Some(40), Some(40));
        assert_eq!(r.clear(), vec![1, 2]);
        assert_eq!(r.next_due(true), None);
        r.push_frame(3, Some(0), Some(0));
        let d = r.next_due(false).unwrap();
        r.assign(d.key, 9);
        assert_eq!(r.pop_ready(), vec![(3, Some(9))]);
    }
}
