//! When each 608 byte pair goes out: the per-frame budget that keeps 608's timing whatever the
//! video frame rate, and the scheduler that turns timed cues into the pairs of each frame, in
//! presentation order. No GStreamer here; times are running times in nanoseconds.
//!
//! 608 carries one byte pair per field-1 slot: about 30 pairs a second (29.97 with NTSC rates:
//! one per frame at 29.97 fps). [`FrameBudget`] spreads that over the frames: 1 pair per frame
//! at 29.97 or 30 fps, 1.2 at 25 fps (1, 1, 1, 1, 2), 1.25 at 24 or 23.976 fps, 0.6 at 50 fps.
//!
//! Pop-on captions ([`Scheduler`]): a caption is loaded into the decoder's hidden memory while
//! the previous one is on screen, then shown at once with end of caption (EOC) on the frame
//! nearest its start, and erased (EDM) on the frame nearest its end, unless the next caption
//! replaces it there. Loading takes time (a two-row caption about 40 pairs, 1.3 s), so a cue
//! must be known that long before its start to be shown on time; a later one is shown as soon
//! as it is loaded, and one whose end has passed by then is dropped (both counted).

use std::collections::VecDeque;

use super::cea608::{self, Channel, Command, PADDING, Pair, Unit};

/// Byte pairs per frame at a frame rate, as a running fraction.
#[derive(Debug, Clone)]
pub struct FrameBudget {
    num: u64,
    den: u64,
    acc: u64,
}

impl FrameBudget {
    /// The budget at `fps_n/fps_d` frames per second: 30 pairs a second (30000/1001 with a
    /// /1001 rate). `None` for an unknown rate (0/1): then one pair per frame.
    pub fn new(fps_n: u32, fps_d: u32) -> FrameBudget {
        let (num, den) = if fps_n == 0 || fps_d == 0 {
            (1, 1)
        } else if fps_d == 1001 {
            (30_000, u64::from(fps_n))
        } else {
            (30 * u64::from(fps_d), u64::from(fps_n))
        };
        FrameBudget { num, den, acc: 0 }
    }

    /// Pairs of the next frame.
    pub fn next_frame(&mut self) -> u32 {
        self.acc += self.num;
        let n = self.acc / self.den;
        self.acc %= self.den;
        n.min(31) as u32
    }

    /// Average pairs per frame.
    pub fn per_frame(&self) -> f64 {
        self.num as f64 / self.den as f64
    }

    /// Back to the first frame of the pattern.
    pub fn reset(&mut self) {
        self.acc = 0;
    }
}

/// A caption ready to load: when it shows, when it goes, and the units that load it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caption {
    pub start: u64,
    /// `None`: until the next caption replaces it or the stream ends.
    pub end: Option<u64>,
    pub load: Vec<Unit>,
}

/// Reading time per character when a cue has no end and needs several captions (about 16
/// characters a second, a common subtitling reading speed).
pub const READING_NS_PER_CHAR: u64 = 60_000_000;

/// Turns a timed cue into pop-on captions on `channel`: several when its text needs more than
/// `max_lines` rows, each shown for its share of the cue's time. Empty text gives none.
pub fn captions(
    channel: Channel,
    max_lines: usize,
    start: u64,
    end: Option<u64>,
    text: &str,
) -> Vec<Caption> {
    let pages = cea608::layout(text, max_lines);
    let total: usize = pages.iter().map(|(_, n)| *n).sum::<usize>().max(1);
    let mut done = 0;
    let n = pages.len();
    pages
        .into_iter()
        .enumerate()
        .map(|(i, (rows, share))| {
            let at = |chars: usize| match end {
                Some(e) => {
                    start
                        + ((e.saturating_sub(start)) as u128 * chars as u128 / total as u128) as u64
                }
                // No end: each caption of the cue for its reading time.
                None => start + chars as u64 * READING_NS_PER_CHAR,
            };
            let c_start = if i == 0 { start } else { at(done) };
            done += share;
            let c_end = if i + 1 == n { end } else { Some(at(done)) };
            Caption {
                start: c_start,
                end: c_end,
                load: cea608::pop_on_load(channel, &rows),
            }
        })
        .collect()
}

/// Counters of the scheduler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScheduleStats {
    /// Captions shown (end of caption sent).
    pub shown: u64,
    /// Shown more than half a frame after their start.
    pub late: u64,
    /// Longest delay of a late caption, ns.
    pub max_late: u64,
    /// Dropped: their end passed before they could be shown.
    pub dropped: u64,
    /// Pairs carrying captions (not padding), doubled control codes counted twice.
    pub caption_pairs: u64,
    pub padding_pairs: u64,
}

/// Pop-on scheduler for one channel. Feed it captions in start order ([`Scheduler::push`]) and
/// ask it, frame by frame in presentation order, for each frame's pairs
/// ([`Scheduler::frame`]).
#[derive(Debug)]
pub struct Scheduler {
    channel: Channel,
    pending: VecDeque<Caption>,
    loading: Option<(Caption, usize)>,
    loaded: Option<Caption>,
    /// What is on screen: `Some(end)` (end `None`: until replaced).
    shown: Option<Option<u64>>,
    /// Pairs committed to go out next (the rest of a unit: a control code's second copy).
    out: VecDeque<Pair>,
    stats: ScheduleStats,
}

impl Scheduler {
    pub fn new(channel: Channel) -> Scheduler {
        Scheduler {
            channel,
            pending: VecDeque::new(),
            loading: None,
            loaded: None,
            shown: None,
            out: VecDeque::new(),
            stats: ScheduleStats::default(),
        }
    }

    pub fn stats(&self) -> ScheduleStats {
        self.stats
    }

    /// Queues a caption. Captions come in start order; one starting before the last queued
    /// one's start is moved there.
    pub fn push(&mut self, mut caption: Caption) {
        let last_start = self
            .pending
            .back()
            .or(self.loaded.as_ref())
            .or(self.loading.as_ref().map(|(c, _)| c))
            .map(|c| c.start);
        if let Some(last) = last_start {
            caption.start = caption.start.max(last);
        }
        if caption.end.is_some_and(|e| e <= caption.start) {
            self.stats.dropped += 1;
            return;
        }
        self.pending.push_back(caption);
    }

    /// Nothing is being loaded or waits to be: the caption on screen (if any) is all there is.
    pub fn idle(&self) -> bool {
        self.pending.is_empty() && self.loading.is_none() && self.loaded.is_none()
    }

    /// Forgets every queued caption and erases both memories (after a flush or seek).
    pub fn reset(&mut self) {
        self.pending.clear();
        self.loading = None;
        self.loaded = None;
        self.out.clear();
        for cmd in [
            Command::EraseDisplayedMemory,
            Command::EraseNonDisplayedMemory,
        ] {
            self.out
                .extend(Unit::Control(cea608::command(self.channel, cmd)).pairs());
        }
        self.shown = None;
    }

    /// The caption on screen with no end goes at `at` (end of the text stream).
    pub fn end_open_caption(&mut self, at: u64) {
        if let Some(None) = self.shown {
            self.shown = Some(Some(at));
        }
        if let Some(c) = self.pending.back_mut().filter(|c| c.end.is_none()) {
            c.end = Some(at.max(c.start + 1));
        } else if let Some(c) = self.loaded.as_mut().filter(|c| c.end.is_none()) {
            c.end = Some(at.max(c.start + 1));
        } else if let Some((c, _)) = self.loading.as_mut().filter(|(c, _)| c.end.is_none()) {
            c.end = Some(at.max(c.start + 1));
        }
    }

    /// The `budget` pairs of the frame presented at `pts` for `duration` (frames in
    /// presentation order). Padding where there is nothing to send.
    pub fn frame(&mut self, pts: u64, duration: u64, budget: u32) -> Vec<Pair> {
        let mut pairs = Vec::with_capacity(budget as usize);
        for _ in 0..budget {
            if self.out.is_empty() {
                self.plan(pts, duration);
            }
            match self.out.pop_front() {
                Some(p) => {
                    self.stats.caption_pairs += 1;
                    pairs.push(p)
                }
                None => {
                    self.stats.padding_pairs += 1;
                    pairs.push(PADDING)
                }
            }
        }
        pairs
    }

    /// Chooses the next unit for a frame at `pts`: end of caption when the loaded caption is
    /// due, erase when the shown one ends, else loading. Times within half a frame count as
    /// now (the nearest frame).
    fn plan(&mut self, pts: u64, duration: u64) {
        let now = pts + duration / 2;
        if let Some(c) = self.loaded.take() {
            if c.start <= now {
                if c.end.is_some_and(|e| e <= pts) {
                    self.stats.dropped += 1;
                } else {
                    self.send(Command::EndOfCaption);
                    self.shown = Some(c.end);
                    self.stats.shown += 1;
                    if pts > c.start + duration / 2 {
                        self.stats.late += 1;
                        self.stats.max_late = self.stats.max_late.max(pts - c.start);
                    }
                    return;
                }
            } else {
                self.loaded = Some(c);
            }
        }
        if let Some(Some(end)) = self.shown
            && end <= now
        {
            // The next caption takes over at this very time: keep this one up until it does.
            let next_start = self
                .loaded
                .as_ref()
                .or(self.loading.as_ref().map(|(c, _)| c))
                .or(self.pending.front())
                .map(|c| c.start);
            if next_start.is_none_or(|s| s > end) {
                self.send(Command::EraseDisplayedMemory);
                self.shown = None;
                return;
            }
        }
        if self.loading.is_none() && self.loaded.is_none() {
            while let Some(c) = self.pending.pop_front() {
                if c.end.is_some_and(|e| e <= now) {
                    self.stats.dropped += 1;
                    continue;
                }
                self.loading = Some((c, 0));
                break;
            }
        }
        if let Some((c, i)) = self.loading.as_mut() {
            self.out.extend(c.load[*i].pairs());
            *i += 1;
            if *i == c.load.len() {
                let (c, _) = self.loading.take().expect("loading");
                self.loaded = Some(c);
            }
        }
    }

    fn send(&mut self, cmd: Command) {
        self.out
            .extend(Unit::Control(cea608::command(self.channel, cmd)).pairs());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const FRAME: u64 = 33_366_667; // 29.97 fps

    #[test]
    fn budget_per_frame_rate() {
        let take = |n, d| {
            let mut b = FrameBudget::new(n, d);
            (0..10).map(|_| b.next_frame()).collect::<Vec<_>>()
        };
        assert_eq!(take(30000, 1001), vec![1; 10]);
        assert_eq!(take(30, 1), vec![1; 10]);
        assert_eq!(take(25, 1), vec![1, 1, 1, 1, 2, 1, 1, 1, 1, 2]);
        assert_eq!(take(24000, 1001), vec![1, 1, 1, 2, 1, 1, 1, 2, 1, 1]);
        assert_eq!(take(50, 1), vec![0, 1, 0, 1, 1, 0, 1, 0, 1, 1]);
        assert_eq!(take(60000, 1001), vec![0, 1, 0, 1, 0, 1, 0, 1, 0, 1]);
        assert_eq!(take(0, 1), vec![1; 10]);
        // 30 pairs a second at 25 fps, 29.97 at 29.97 fps.
        let mut b = FrameBudget::new(25, 1);
        assert_eq!((0..25).map(|_| b.next_frame()).sum::<u32>(), 30);
        assert!((FrameBudget::new(25, 1).per_frame() - 1.2).abs() < 1e-9);
    }

    /// Runs the scheduler over frames at 29.97 fps from 0 to `until`; returns (frame pts,
    /// pair) for every non-padding pair.
    fn run(s: &mut Scheduler, until: u64) -> Vec<(u64, Pair)> {
        let mut out = Vec::new();
        let mut n = 0u64;
        loop {
            let pts = n * 1001 * 1_000_000_000 / 30000;
            if pts > until {
                break;
            }
            for p in s.frame(pts, FRAME, 1) {
                if p != PADDING {
                    out.push((pts, p));
                }
            }
            n += 1;
        }
        out
    }

    fn first(pairs: &[(u64, Pair)], p: Pair) -> Option<u64> {
        pairs.iter().find(|(_, q)| *q == p).map(|(t, _)| *t)
    }

    #[test]
    fn caption_shows_at_its_start_and_goes_at_its_end() {
        let mut s = Scheduler::new(Channel::Cc1);
        for c in captions(Channel::Cc1, 2, 3000 * MS, Some(5000 * MS), "Buenas noches") {
            s.push(c);
        }
        let pairs = run(&mut s, 6000 * MS);
        let eoc = first(&pairs, [0x14, 0x2f]).unwrap();
        let edm = first(&pairs, [0x14, 0x2c]).unwrap();
        assert!(eoc.abs_diff(3000 * MS) <= FRAME / 2, "{eoc}");
        assert!(edm.abs_diff(5000 * MS) <= FRAME / 2, "{edm}");
        // Loading started at once (frame 0) and control codes are doubled.
        assert_eq!(pairs[0], (0, [0x14, 0x20]));
        assert_eq!(pairs[1].1, [0x14, 0x20]);
        let eocs: Vec<_> = pairs.iter().filter(|(_, p)| *p == [0x14, 0x2f]).collect();
        assert_eq!(eocs.len(), 2);
        assert_eq!(
            eocs[1].0 - eocs[0].0,
            1001 * 1_000_000 / 30,
            "consecutive frames"
        );
        let st = s.stats();
        assert_eq!((st.shown, st.late, st.dropped), (1, 0, 0));
    }

    #[test]
    fn late_cue_is_shown_once_loaded() {
        let mut s = Scheduler::new(Channel::Cc1);
        // Frames up to 1 s go out before the cue (starting at 0.5 s) is known.
        let mut n = 0u64;
        let pts = |n: u64| n * 1001 * 1_000_000_000 / 30000;
        while pts(n) < 1000 * MS {
            assert_eq!(s.frame(pts(n), FRAME, 1), vec![PADDING]);
            n += 1;
        }
        for c in captions(Channel::Cc1, 2, 500 * MS, Some(4000 * MS), "Hola a todos") {
            s.push(c);
        }
        let mut eoc = None;
        while pts(n) < 5000 * MS {
            if s.frame(pts(n), FRAME, 1) == vec![[0x14, 0x2f]] && eoc.is_none() {
                eoc = Some(pts(n));
            }
            n += 1;
        }
        // RCL, ENM, PAC (doubled: 6) + 6 char pairs = 12 frames after 1 s.
        let eoc = eoc.unwrap();
        assert!(eoc > 1000 * MS && eoc < 1500 * MS, "{eoc}");
        let st = s.stats();
        assert_eq!((st.shown, st.late), (1, 1));
        assert!(st.max_late >= 500 * MS);
    }

    #[test]
    fn cue_over_before_it_could_load_is_dropped() {
        let mut s = Scheduler::new(Channel::Cc1);
        for c in captions(Channel::Cc1, 2, 0, Some(100 * MS), &"largo ".repeat(10)) {
            s.push(c);
        }
        let pairs = run(&mut s, 2000 * MS);
        assert_eq!(first(&pairs, [0x14, 0x2f]), None);
        assert_eq!(s.stats().dropped, 1);
    }

    #[test]
    fn adjacent_captions_replace_without_erase() {
        let mut s = Scheduler::new(Channel::Cc1);
        for c in captions(Channel::Cc1, 2, 2000 * MS, Some(4000 * MS), "Uno") {
            s.push(c);
        }
        for c in captions(Channel::Cc1, 2, 4000 * MS, Some(6000 * MS), "Dos") {
            s.push(c);
        }
        let pairs = run(&mut s, 7000 * MS);
        let eocs: Vec<u64> = pairs
            .iter()
            .filter(|(_, p)| *p == [0x14, 0x2f])
            .map(|(t, _)| *t)
            .collect();
        let edms: Vec<u64> = pairs
            .iter()
            .filter(|(_, p)| *p == [0x14, 0x2c])
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(eocs.len(), 4);
        assert!(eocs[2].abs_diff(4000 * MS) <= FRAME / 2);
        // The only erase is at the second caption's end.
        assert_eq!(edms.len(), 2);
        assert!(edms[0].abs_diff(6000 * MS) <= FRAME / 2);
    }

    #[test]
    fn long_cue_pages_share_its_time() {
        let text = "Las fuertes lluvias causaron largos retrasos en la línea de ferrocarril \
                    del norte esta tarde, dicen los ingenieros.";
        let cs = captions(Channel::Cc1, 2, 10_000 * MS, Some(16_000 * MS), text);
        assert_eq!(cs.len(), 2);
        assert_eq!(cs[0].start, 10_000 * MS);
        assert_eq!(cs[0].end, Some(cs[1].start));
        assert!(cs[1].start > 12_000 * MS && cs[1].start < 14_000 * MS);
        assert_eq!(cs[1].end, Some(16_000 * MS));
    }

    #[test]
    fn open_ended_long_cue_pages_follow_reading_time() {
        let text = "Las fuertes lluvias causaron largos retrasos en la línea de ferrocarril \
                    del norte esta tarde, dicen los ingenieros.";
        let cs = captions(Channel::Cc1, 2, 1000 * MS, None, text);
        assert_eq!(cs.len(), 2);
        assert!(cs[1].start > 3000 * MS, "{}", cs[1].start);
        assert_eq!(cs[0].end, Some(cs[1].start));
        assert_eq!(cs[1].end, None);
    }

    #[test]
    fn open_ended_caption_stays_until_the_end() {
        let mut s = Scheduler::new(Channel::Cc1);
        for c in captions(Channel::Cc1, 2, 1000 * MS, None, "Sin fin") {
            s.push(c);
        }
        let pairs = run(&mut s, 5000 * MS);
        assert!(first(&pairs, [0x14, 0x2f]).is_some());
        assert_eq!(first(&pairs, [0x14, 0x2c]), None);
        s.end_open_caption(6000 * MS);
        let mut edm = None;
        for n in 150..200u64 {
            let pts = n * 1001 * 1_000_000_000 / 30000;
            if s.frame(pts, FRAME, 1) == vec![[0x14, 0x2c]] && edm.is_none() {
                edm = Some(pts);
            }
        }
        assert!(edm.unwrap().abs_diff(6000 * MS) <= FRAME / 2);
    }

    #[test]
    fn at_25_fps_loading_uses_the_larger_budget() {
        let mut s = Scheduler::new(Channel::Cc1);
        let mut budget = FrameBudget::new(25, 1);
        for c in captions(Channel::Cc1, 2, 0, Some(10_000 * MS), &"x".repeat(60)) {
            s.push(c);
        }
        let mut pairs = 0;
        let mut eoc_frame = None;
        for n in 0..100u64 {
            let out = s.frame(n * 40 * MS, 40 * MS, budget.next_frame());
            if out.contains(&[0x14, 0x2f]) && eoc_frame.is_none() {
                eoc_frame = Some(n);
            }
            pairs += out.len();
        }
        assert_eq!(pairs, 120);
        // RCL, ENM, row 1 (preamble, 16 pairs), row 2 (preamble, tab offset 2, 14 pairs): 40
        // pairs before EOC, which is the 41st: frame 34 at 1.2 pairs a frame.
        assert_eq!(eoc_frame, Some(34));
    }

    #[test]
    fn reset_erases_everything() {
        let mut s = Scheduler::new(Channel::Cc3);
        for c in captions(Channel::Cc3, 2, 0, Some(10_000 * MS), "Hola") {
            s.push(c);
        }
        run(&mut s, 1000 * MS);
        s.reset();
        let out = s.frame(0, FRAME, 4);
        assert_eq!(
            out,
            vec![[0x15, 0x2c], [0x15, 0x2c], [0x15, 0x2e], [0x15, 0x2e]]
        );
        assert!(s.idle());
    }
}
