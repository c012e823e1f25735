//! Where dubbed speech plays, without GStreamer: translated speech is often longer than the
//! fragment it replaces (Spanish from espeak-ng runs ≈ 1.3× the English), so instead of
//! cutting every sentence at its fragment's end, each dub's speech goes into a queue and runs
//! on into the following fragments' time, ahead of their own dub.
//!
//! * A dub plays where the service put it in its fragment (its leading silence kept, so an
//!   echo is exact) or, when speech is still queued, right after that speech, from its first
//!   speech frame (near-silence is below −50 dBFS): two dubs never play at once and no silence
//!   is queued between them. Its trailing near-silence is kept only inside its own fragment.
//! * Speech that would run more than `max_backlog` past its own fragment's end is first moved
//!   to the end of the queue, then time-compressed with its pitch kept (Signalsmith Stretch)
//!   up to `max_tempo`, then trimmed with a fade-out; every step is counted.
//! * Each output fragment takes the queued speech of its own time span ([`Scheduler::take`]);
//!   the output's timestamps and sample counts never change: speech only moves into later
//!   fragments that have not gone out yet, so nothing adds latency.
//!
//! Frame positions are relative to the start of the next fragment to go out.

use std::collections::VecDeque;

/// Near-silence: below −50 dBFS (peak), a dub's edges are not speech.
pub const SILENCE_LEVEL: i16 = 104;

/// How the queue is bounded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// How far speech may run past its own fragment's end before it is compressed, in frames.
    pub max_backlog: usize,
    /// Fastest tempo compression may use; 1.0 never compresses (speech beyond the backlog is
    /// trimmed).
    pub max_tempo: f64,
    /// Length of the fade-out of trimmed speech, in frames.
    pub fade: usize,
    /// Window of the speech detection, in frames (10 ms): a window is speech when its RMS is
    /// above near-silence, so a lone click is not.
    pub window: usize,
}

/// Time-compression of interleaved S16 audio to an exact length, pitch kept.
pub trait Stretcher {
    /// `input` (`channels` interleaved) played in exactly `frames` frames; `None` when the
    /// input is too short to be stretched.
    fn stretch(&mut self, input: &[i16], channels: usize, frames: usize) -> Option<Vec<i16>>;
}

/// The Signalsmith Stretch time-stretcher (a phase-vocoder family algorithm that keeps pitch
/// and formants), one instance kept per format.
pub struct Signalsmith {
    rate: u32,
    instance: Option<(usize, signalsmith_stretch::Stretch)>,
}

impl Signalsmith {
    pub fn new(rate: u32) -> Self {
        Signalsmith {
            rate,
            instance: None,
        }
    }
}

impl Stretcher for Signalsmith {
    fn stretch(&mut self, input: &[i16], channels: usize, frames: usize) -> Option<Vec<i16>> {
        if self.instance.as_ref().is_none_or(|(c, _)| *c != channels) {
            let s = signalsmith_stretch::Stretch::preset_default(channels as u32, self.rate);
            self.instance = Some((channels, s));
        }
        let (_, s) = self.instance.as_mut().expect("just made");
        s.reset();
        let input: Vec<f32> = input.iter().map(|&v| f32::from(v) / 32768.0).collect();
        let mut output = vec![0f32; frames * channels];
        if !s.exact(&input, &mut output) {
            return None;
        }
        Some(
            output
                .iter()
                .map(|&v| (v * 32768.0).round().clamp(-32768.0, 32767.0) as i16)
                .collect(),
        )
    }
}

/// Frames `[first, end)` of `samples` from the first to the last loud frame of the windows
/// (of `window` frames) whose RMS is above near-silence, if any.
pub fn speech_bounds(samples: &[i16], channels: usize, window: usize) -> Option<(usize, usize)> {
    let ch = channels.max(1);
    let w = window.max(1) * ch;
    let level = f64::from(SILENCE_LEVEL);
    let loud_window = |x: &[i16]| {
        let sum: f64 = x.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
        (sum / x.len() as f64).sqrt() >= level
    };
    let loud_frame = |f: &[i16]| f.iter().any(|s| s.unsigned_abs() >= SILENCE_LEVEL as u16);
    let windows: Vec<&[i16]> = samples.chunks(w).collect();
    let a = windows.iter().position(|x| loud_window(x))?;
    let b = windows.iter().rposition(|x| loud_window(x))?;
    let frames = |i: usize| windows[i].chunks_exact(ch);
    let first = a * window.max(1) + frames(a).position(loud_frame).unwrap_or(0);
    let last = b * window.max(1)
        + frames(b)
            .rposition(loud_frame)
            .unwrap_or(windows[b].len() / ch - 1);
    Some((first, last + 1))
}

/// Fades the last `fade` frames of `samples` out linearly.
fn fade_out(samples: &mut [i16], channels: usize, fade: usize) {
    let frames = samples.len() / channels;
    let fade = fade.min(frames);
    for f in 0..fade {
        let w = (fade - f) as f32 / (fade + 1) as f32;
        let at = (frames - fade + f) * channels;
        for s in &mut samples[at..at + channels] {
            *s = (f32::from(*s) * w).round() as i16;
        }
    }
}

/// Smooths the step from `last` (the frame before `samples`) into `samples` over `fade`
/// frames: the difference decays linearly to zero, the waveform stays continuous.
fn smooth_step(samples: &mut [i16], channels: usize, last: &[i16], fade: usize) {
    let frames = samples.len() / channels;
    let fade = fade.min(frames);
    let first: Vec<f32> = samples[..channels].iter().map(|&v| f32::from(v)).collect();
    for f in 0..fade {
        let w = 1.0 - (f + 1) as f32 / (fade + 1) as f32;
        for c in 0..channels {
            let i = f * channels + c;
            let v = f32::from(samples[i]) + (f32::from(last[c]) - first[c]) * w;
            samples[i] = v.round().clamp(-32768.0, 32767.0) as i16;
        }
    }
}

/// Counters of what the queue did, in frames.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    /// Speech that played past the end of its own fragment.
    pub overflow: u64,
    /// Speech time removed by compression.
    pub compressed: u64,
    /// Speech cut off (fade-out trims, bypass, flushes, the end of the stream).
    pub trimmed: u64,
    /// Most speech carried over into the next fragment.
    pub max_backlog: u64,
    /// Fastest tempo used (1.0: none).
    pub max_tempo: f64,
}

/// Where a fragment's own speech went.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placed {
    /// First frame, from the fragment's start.
    pub start: usize,
    pub frames: usize,
    /// Tempo it plays at (1.0: as the service made it).
    pub tempo: f64,
    /// Frames cut off its end.
    pub trimmed: usize,
}

/// What one output fragment plays of the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    /// The fragment's speech track: queued speech where it plays, zeros elsewhere.
    pub track: Vec<i16>,
    /// Frames from the fragment's start to the end of the last speech in it (0: none).
    pub speech_end: usize,
}

#[derive(Debug, Clone)]
struct Segment {
    start: usize,
    samples: Vec<i16>,
}

/// The speech queue of one stream (one rate and channel count).
#[derive(Debug)]
pub struct Scheduler {
    channels: usize,
    segments: VecDeque<Segment>,
    counters: Counters,
}

impl Scheduler {
    pub fn new(channels: usize) -> Self {
        Scheduler {
            channels: channels.max(1),
            segments: VecDeque::new(),
            counters: Counters {
                max_tempo: 1.0,
                ..Counters::default()
            },
        }
    }

    pub fn channels(&self) -> usize {
        self.channels
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    fn frames_of(&self, s: &Segment) -> usize {
        s.samples.len() / self.channels
    }

    /// Where the queued speech ends, from the next fragment's start (0: nothing queued).
    pub fn queue_end(&self) -> usize {
        self.segments
            .iter()
            .map(|s| s.start + self.frames_of(s))
            .max()
            .unwrap_or(0)
    }

    /// Queues the speech of the dub of the fragment about to go out (`slot` frames long).
    /// Returns where it plays, or `None` when the dub holds no speech.
    pub fn place(
        &mut self,
        dub: &[i16],
        slot: usize,
        policy: &Policy,
        stretcher: &mut dyn Stretcher,
    ) -> Option<Placed> {
        let ch = self.channels;
        let (first, end) = speech_bounds(dub, ch, policy.window)?;
        let dub_frames = dub.len() / ch;
        let queued = self.queue_end();
        let allowed_end = slot + policy.max_backlog;
        // Where it starts in the output and from which of its frames: at its own place when
        // the queue leaves room (its own near-silence kept, so an echo is exact), else right
        // after the queued speech, from its first speech frame.
        let start = queued;
        let mut from = if queued <= first { queued } else { first };
        // Its trailing near-silence is kept only inside its own fragment.
        let mut to = end.max(dub_frames.min(from + slot.saturating_sub(start)));
        if start + (to - from) > allowed_end {
            // Too long: its own silences are given up first.
            (from, to) = (first, end);
        }
        let mut samples = dub[from * ch..to * ch].to_vec();
        let len = to - from;
        let mut tempo = 1.0;
        let mut trimmed = 0;
        if start + len > allowed_end {
            let room = allowed_end - start;
            let wanted = len as f64 / room as f64;
            tempo = wanted.min(policy.max_tempo).max(1.0);
            if tempo > 1.0 {
                let target = if tempo < wanted {
                    (len as f64 / tempo).ceil() as usize
                } else {
                    room
                };
                match stretcher.stretch(&samples, ch, target) {
                    Some(s) => samples = s,
                    None => tempo = 1.0,
                }
            }
            let now = samples.len() / ch;
            self.counters.compressed += (len - now.min(len)) as u64;
            if now > room {
                trimmed = now - room;
                samples.truncate(room * ch);
                fade_out(&mut samples, ch, policy.fade);
                self.counters.trimmed += trimmed as u64;
            }
            self.counters.max_tempo = self.counters.max_tempo.max(tempo);
        }
        // Right after the queued speech: the step between the two is smoothed away.
        if queued > 0
            && start == queued
            && let Some(prev) = self.segments.back()
        {
            let last = &prev.samples[prev.samples.len() - ch..];
            smooth_step(&mut samples, ch, last, policy.fade);
        }
        let frames = samples.len() / ch;
        self.counters.overflow += (start + frames).saturating_sub(slot) as u64;
        self.segments.push_back(Segment { start, samples });
        // The speech within the segment (its kept silences are not speech).
        let (lead, speech) = if tempo > 1.0 || trimmed > 0 {
            (0, frames)
        } else {
            (first - from, end - first)
        };
        Some(Placed {
            start: start + lead,
            frames: speech,
            tempo,
            trimmed,
        })
    }

    /// The last fragment before the end of the stream: the queued speech is compressed into
    /// what remains of it (up to `max_tempo`), the rest trimmed and counted.
    pub fn fit_last(&mut self, slot: usize, policy: &Policy, stretcher: &mut dyn Stretcher) {
        let end = self.queue_end();
        if end <= slot {
            return;
        }
        let ch = self.channels;
        let from = self.segments.iter().map(|s| s.start).min().unwrap_or(0);
        // One track from the first queued speech to the last, gaps silent.
        let mut track = vec![0i16; (end - from) * ch];
        for s in self.segments.drain(..) {
            let at = (s.start - from) * ch;
            track[at..at + s.samples.len()].copy_from_slice(&s.samples);
        }
        let len = end - from;
        let room = slot.saturating_sub(from);
        let wanted = len as f64 / room.max(1) as f64;
        let tempo = wanted.min(policy.max_tempo).max(1.0);
        if tempo > 1.0 && room > 0 {
            let target = (len as f64 / tempo).ceil() as usize;
            if let Some(s) = stretcher.stretch(&track, ch, target) {
                self.counters.compressed += (len - target.min(len)) as u64;
                self.counters.max_tempo = self.counters.max_tempo.max(tempo);
                track = s;
            }
        }
        let now = track.len() / ch;
        if now > room {
            self.counters.trimmed += (now - room) as u64;
            track.truncate(room * ch);
            fade_out(&mut track, ch, policy.fade);
        }
        if !track.is_empty() {
            self.segments.push_back(Segment {
                start: from,
                samples: track,
            });
        }
    }

    /// Takes the speech that plays in the next `slot` frames out of the queue. Speech that
    /// stops inside the fragment with nothing right after it fades out over `fade` frames (a
    /// service's abrupt end is no click).
    pub fn take(&mut self, slot: usize, fade: usize) -> Slot {
        let ch = self.channels;
        let mut track = vec![0i16; slot * ch];
        let mut speech_end = 0;
        let starts: Vec<usize> = self.segments.iter().map(|s| s.start).collect();
        let mut rest = VecDeque::with_capacity(self.segments.len());
        for mut s in self.segments.drain(..) {
            let frames = s.samples.len() / ch;
            if s.start < slot {
                let n = frames.min(slot - s.start);
                let at = s.start * ch;
                track[at..at + n * ch].copy_from_slice(&s.samples[..n * ch]);
                let end = s.start + n;
                speech_end = speech_end.max(end);
                if n < frames {
                    s.samples.drain(..n * ch);
                    s.start = 0;
                    rest.push_back(s);
                } else if end < slot && !starts.contains(&end) {
                    let from = end.saturating_sub(fade).max(s.start);
                    fade_out(&mut track[from * ch..end * ch], ch, end - from);
                }
            } else {
                s.start -= slot;
                rest.push_back(s);
            }
        }
        self.segments = rest;
        let backlog = self.queue_end() as u64;
        self.counters.max_backlog = self.counters.max_backlog.max(backlog);
        Slot { track, speech_end }
    }

    /// Drops every queued speech (bypass, flush, discontinuity); counted as trimmed. Returns
    /// the frames dropped.
    pub fn clear(&mut self) -> usize {
        let ch = self.channels;
        let dropped: usize = self.segments.drain(..).map(|s| s.samples.len() / ch).sum();
        self.counters.trimmed += dropped as u64;
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Changes the length by dropping or repeating frames (pitch not kept: placement tests only).
    struct Nearest;

    impl Stretcher for Nearest {
        fn stretch(&mut self, input: &[i16], channels: usize, frames: usize) -> Option<Vec<i16>> {
            let n = input.len() / channels;
            Some(
                (0..frames)
                    .flat_map(|f| {
                        let src = f * n / frames;
                        input[src * channels..(src + 1) * channels].to_vec()
                    })
                    .collect(),
            )
        }
    }

    const POLICY: Policy = Policy {
        max_backlog: 150,
        max_tempo: 1.25,
        fade: 10,
        window: 1,
    };

    /// `speech` frames of a loud marker value, surrounded by `lead` and `tail` silent frames.
    fn dub(lead: usize, speech: usize, tail: usize, value: i16) -> Vec<i16> {
        let mut d = vec![0i16; lead];
        d.extend(std::iter::repeat_n(value, speech));
        d.extend(std::iter::repeat_n(3, tail)); // faint noise: still silence
        d
    }

    #[test]
    fn speech_bounds_ignore_near_silence() {
        assert_eq!(speech_bounds(&dub(5, 10, 7, 1000), 1, 1), Some((5, 15)));
        assert_eq!(speech_bounds(&[0, 50, -100, 3], 1, 1), None);
        // Stereo: a frame is speech when any channel is.
        assert_eq!(speech_bounds(&[0, 0, 0, 900, 0, 0], 2, 1), Some((1, 2)));
        // In 10-frame windows a lone click is not speech, a run of loud frames is, to its
        // first and last loud frame.
        let mut x = vec![0i16; 100];
        x[9] = 300;
        assert_eq!(speech_bounds(&x, 1, 10), None);
        x[33..58].fill(500);
        assert_eq!(speech_bounds(&x, 1, 10), Some((33, 58)));
    }

    #[test]
    fn a_dub_that_fits_plays_where_the_service_put_it() {
        let mut s = Scheduler::new(1);
        let p = s
            .place(&dub(20, 50, 30, 1000), 100, &POLICY, &mut Nearest)
            .unwrap();
        assert_eq!(
            p,
            Placed {
                start: 20,
                frames: 50,
                tempo: 1.0,
                trimmed: 0
            }
        );
        // The dub as it came: its own near-silence kept inside its fragment.
        let slot = s.take(100, 0);
        assert_eq!(slot.speech_end, 100);
        assert_eq!(slot.track, dub(20, 50, 30, 1000));
        assert_eq!(s.queue_end(), 0);
        assert_eq!(s.counters().overflow, 0);
    }

    #[test]
    fn long_speech_runs_into_the_next_fragments_ahead_of_their_own() {
        let mut s = Scheduler::new(1);
        // 130 frames of speech for a 100-frame fragment: 30 run over.
        s.place(&dub(0, 130, 0, 1000), 100, &POLICY, &mut Nearest);
        let a = s.take(100, 0);
        assert!(a.track.iter().all(|&v| v == 1000));
        assert_eq!(s.queue_end(), 30);
        // The next dub starts after it, not at its own (silent) lead.
        let p = s
            .place(&dub(10, 60, 0, 2000), 100, &POLICY, &mut Nearest)
            .unwrap();
        assert_eq!(p.start, 30);
        let b = s.take(100, 0);
        assert!(b.track[..30].iter().all(|&v| v == 1000));
        // The step from the one into the other is smoothed over the fade (10 frames).
        assert!(b.track[30] < 2000 && b.track[30] > 1000, "{}", b.track[30]);
        assert!(b.track[40..90].iter().all(|&v| v == 2000));
        assert_eq!(b.speech_end, 90);
        let c = s.counters();
        assert_eq!((c.overflow, c.compressed, c.trimmed), (30, 0, 0));
        assert_eq!(c.max_backlog, 30);
        assert_eq!(c.max_tempo, 1.0);
    }

    #[test]
    fn past_the_backlog_speech_is_compressed_then_trimmed() {
        let mut s = Scheduler::new(1);
        // Fill the backlog: 100 + 150 frames of speech in a 100-frame fragment.
        s.place(&dub(0, 250, 0, 1000), 100, &POLICY, &mut Nearest);
        s.take(100, 0);
        assert_eq!(s.queue_end(), 150);
        // 120 frames more, room for 100 (100 + 150 − 150): tempo 1.2, within 1.25.
        let p = s
            .place(&dub(0, 120, 0, 2000), 100, &POLICY, &mut Nearest)
            .unwrap();
        assert_eq!((p.start, p.frames, p.trimmed), (150, 100, 0));
        assert!((p.tempo - 1.2).abs() < 1e-9);
        s.take(100, 0);
        // 150 frames more, room for 100: 1.25 gives 120, 20 trimmed.
        let p = s
            .place(&dub(0, 150, 0, 3000), 100, &POLICY, &mut Nearest)
            .unwrap();
        assert_eq!((p.frames, p.trimmed), (100, 20));
        assert_eq!(p.tempo, 1.25);
        let c = s.counters();
        assert_eq!(c.compressed, 20 + 30);
        assert_eq!(c.trimmed, 20);
        assert_eq!(c.max_tempo, 1.25);
        // The backlog never exceeds the bound.
        s.take(100, 0);
        assert!(s.counters().max_backlog <= 150);
        // The trimmed end fades out (two fragments on).
        s.take(100, 0);
        let last = s.take(100, 0);
        let end = last.speech_end;
        assert_eq!(end, 50);
        assert_eq!(last.track[end - 11], 3000);
        assert!(
            last.track[end - 1].abs() < 3000 / 5,
            "{}",
            last.track[end - 1]
        );
    }

    #[test]
    fn speech_that_stops_inside_a_fragment_fades_out() {
        let mut s = Scheduler::new(1);
        s.place(&dub(0, 60, 40, 8000), 100, &POLICY, &mut Nearest);
        let slot = s.take(100, 10);
        assert_eq!(slot.speech_end, 100);
        // Its own trailing near-silence is kept to the fragment's end: no fade needed.
        assert_eq!(slot.track[..60], [8000; 60]);
        // Cut by the queue (leading silence dropped, no tail): it fades.
        let mut s = Scheduler::new(1);
        s.place(&dub(0, 120, 0, 8000), 100, &POLICY, &mut Nearest);
        s.take(100, 10);
        let slot = s.take(100, 10);
        assert_eq!(slot.speech_end, 20);
        assert!(slot.track[19].abs() < 8000 / 5, "{}", slot.track[19]);
        assert_eq!(slot.track[9], 8000);
    }

    #[test]
    fn shift_never_compresses() {
        let policy = Policy {
            max_tempo: 1.0,
            ..POLICY
        };
        let mut s = Scheduler::new(1);
        let p = s
            .place(&dub(0, 300, 0, 1000), 100, &policy, &mut Nearest)
            .unwrap();
        assert_eq!((p.frames, p.trimmed, p.tempo), (250, 50, 1.0));
        assert_eq!(s.counters().compressed, 0);
    }

    #[test]
    fn the_last_fragment_takes_what_fits_and_counts_the_rest() {
        let mut s = Scheduler::new(2);
        s.place(&dub(0, 2 * 180, 0, 1000), 100, &POLICY, &mut Nearest);
        // End of stream after this fragment: 180 frames into 100 at most 1.25× → 144, 44 cut.
        s.fit_last(100, &POLICY, &mut Nearest);
        let slot = s.take(100, 0);
        assert_eq!(slot.speech_end, 100);
        assert_eq!(s.queue_end(), 0);
        let c = s.counters();
        assert_eq!((c.compressed, c.trimmed), (36, 44));
    }

    #[test]
    fn clearing_counts_what_was_dropped() {
        let mut s = Scheduler::new(1);
        s.place(&dub(0, 160, 0, 1000), 100, &POLICY, &mut Nearest);
        s.take(100, 0);
        assert_eq!(s.clear(), 60);
        assert_eq!(s.counters().trimmed, 60);
        assert_eq!(s.take(100, 0).speech_end, 0);
    }

    #[test]
    fn silent_dubs_queue_nothing() {
        let mut s = Scheduler::new(1);
        assert_eq!(s.place(&[0; 100], 100, &POLICY, &mut Nearest), None);
        assert_eq!(
            s.take(100, 0),
            Slot {
                track: vec![0; 100],
                speech_end: 0
            }
        );
    }

    /// Frequency of the strongest bin between 100 and 2000 Hz (10 Hz steps), by DFT.
    fn pitch(x: &[i16], rate: u32) -> f64 {
        let mut best = (0.0, 0.0);
        for k in (100..2000).step_by(10) {
            let hz = f64::from(k);
            let (mut re, mut im) = (0.0, 0.0);
            for (i, &s) in x.iter().enumerate() {
                let p = std::f64::consts::TAU * hz * i as f64 / f64::from(rate);
                re += f64::from(s) * p.cos();
                im += f64::from(s) * p.sin();
            }
            let m = re * re + im * im;
            if m > best.1 {
                best = (hz, m);
            }
        }
        best.0
    }

    #[test]
    fn signalsmith_compresses_to_the_exact_length_and_keeps_the_pitch() {
        let rate = 16000;
        let tone: Vec<i16> = (0..rate as usize)
            .map(|i| (8000.0 * (std::f64::consts::TAU * 440.0 * i as f64 / 16000.0).sin()) as i16)
            .collect();
        let mut st = Signalsmith::new(rate);
        let out = st.stretch(&tone, 1, 12800).unwrap();
        assert_eq!(out.len(), 12800);
        // Resampling to 1.25× would move 440 Hz to 550 Hz; a time-stretch keeps it.
        let p = pitch(&out[2000..10000], rate);
        assert!((p - 440.0).abs() <= 10.0, "pitch {p}");
        // Stereo too, and too short to stretch is None.
        let stereo: Vec<i16> = tone.iter().flat_map(|&s| [s, s]).collect();
        assert_eq!(st.stretch(&stereo, 2, 12800).unwrap().len(), 25600);
        assert!(st.stretch(&tone[..200], 1, 160).is_none());
    }
}
