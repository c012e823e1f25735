//! The output stage of `stsbridge` without GStreamer: one fragment's samples from what became
//! of it (its [`Outcome`]), the speech queue ([`Scheduler`]) and the seams ([`Seam`]).
//!
//! With `overflow=trim` each dub is cut or padded to its fragment, as it always was. With
//! `shift` and `compress` the dub's speech is queued and each fragment plays its share of the
//! queue:
//! * a dubbed fragment plays the queued speech over the original at `original-mix` (off by
//!   default);
//! * a fragment that falls back (or is bypassed, passed through or a gap) while speech from
//!   earlier fragments still runs on keeps that speech to its end over the original ducked by
//!   `fallback-gain` (silence with `fallback=silence`), then its fallback signal, the step
//!   smoothed over `crossfade`: never two voices at full level, never a word cut. `bypass`
//!   is the operator's "original now": it drops the queued speech at once.

use super::convert::Format;
use super::loudness::Matcher;
use super::mix::{self, Seam, Signal};
use super::overflow::{Counters, Placed, Policy, Scheduler, Signalsmith, Stretcher};
use super::report::Outcome;

/// What dubs may do when longer than their fragment (`overflow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Cut (or zero-pad) each dub to its fragment.
    Trim,
    /// Queue speech into the following fragments; never compress.
    Shift,
    /// Queue, and compress (pitch kept) past the backlog.
    Compress,
}

/// How one fragment is to be rendered.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub mode: Mode,
    /// `max-backlog` and `max-tempo` (1.0 for `shift`), in the stream's frames.
    pub policy: Policy,
    /// The dub's signal (with `original-mix`).
    pub dub: Signal,
    /// The fallback's signal.
    pub fallback: Signal,
    /// Gain of the original under speech that runs on into a fragment without its own dub.
    pub under: f32,
    /// Seam smoothing, frames.
    pub crossfade: usize,
    /// The fragment starts a discontinuity: no smoothing against what came before.
    pub discont: bool,
    /// The last fragment before the end of the stream.
    pub last: bool,
    /// `loudness-match`: the largest gain (dB, either way) a dub may get; `None`: off.
    pub loudness: Option<f64>,
}

/// What the rendering did, for counters and messages.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rendered {
    /// Trim mode: frames the dub was padded (positive) or cut (negative) by.
    pub fitted_frames: i64,
    /// Where the fragment's own speech plays, from the fragment's start.
    pub placed: Option<Placed>,
    /// Queued speech plays in this fragment (its output is not silence).
    pub speech: bool,
}

/// Counters of the speech queue in nanoseconds, over every format the stream had.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SpeechStats {
    pub overflow_ns: u64,
    pub compressed_ns: u64,
    pub trimmed_ns: u64,
    pub max_backlog_ns: u64,
    pub max_tempo: f64,
    /// Gain applied to the last matched dub, dB.
    pub gain_db: f64,
}

impl SpeechStats {
    fn add(self, c: Counters, rate: u32) -> SpeechStats {
        let ns =
            |frames: u64| (u128::from(frames) * 1_000_000_000 / u128::from(rate.max(1))) as u64;
        SpeechStats {
            overflow_ns: self.overflow_ns + ns(c.overflow),
            compressed_ns: self.compressed_ns + ns(c.compressed),
            trimmed_ns: self.trimmed_ns + ns(c.trimmed),
            max_backlog_ns: self.max_backlog_ns.max(ns(c.max_backlog)),
            max_tempo: self.max_tempo.max(c.max_tempo),
            gain_db: self.gain_db,
        }
    }
}

struct Speech {
    format: Format,
    scheduler: Scheduler,
    stretcher: Signalsmith,
}

/// The output stage of one stream.
#[derive(Default)]
pub struct Output {
    seam: Seam,
    speech: Option<Speech>,
    matcher: Option<Matcher>,
    gain_db: f64,
    /// Counters of the queues of earlier formats.
    past: SpeechStats,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output")
            .field(
                "queued",
                &self.speech.as_ref().map(|s| s.scheduler.queue_end()),
            )
            .field("past", &self.past)
            .finish_non_exhaustive()
    }
}

impl Output {
    /// Forgets the previous fragment and drops queued speech (flush, caps change).
    pub fn reset(&mut self) {
        self.seam.reset();
        if let Some(s) = &mut self.speech {
            s.scheduler.clear();
        }
    }

    pub fn stats(&self) -> SpeechStats {
        let s = match &self.speech {
            Some(s) => self.past.add(s.scheduler.counters(), s.format.rate),
            None => SpeechStats {
                max_tempo: self.past.max_tempo.max(1.0),
                ..self.past
            },
        };
        SpeechStats {
            gain_db: self.gain_db,
            ..s
        }
    }

    /// The dub at the loudness of the original it replaces (`loudness-match`).
    fn matched<'a>(
        &mut self,
        input: &[i16],
        format: Format,
        dub: Option<&'a [i16]>,
        plan: &Plan,
    ) -> Option<std::borrow::Cow<'a, [i16]>> {
        let dub = dub?;
        let Some(max_gain) = plan.loudness else {
            return Some(std::borrow::Cow::Borrowed(dub));
        };
        if self
            .matcher
            .as_ref()
            .is_none_or(|m| m.format() != (format.rate, format.channels))
        {
            self.matcher = Matcher::new(format.rate, format.channels);
        }
        let Some(m) = self.matcher.as_mut() else {
            return Some(std::borrow::Cow::Borrowed(dub));
        };
        let mut d = dub.to_vec();
        m.apply(input, &mut d, max_gain);
        self.gain_db = m.applied_db();
        Some(std::borrow::Cow::Owned(d))
    }

    fn speech_for(&mut self, format: Format) -> &mut Speech {
        if self.speech.as_ref().is_some_and(|s| s.format != format) {
            let mut old = self.speech.take().expect("checked");
            old.scheduler.clear();
            self.past = self.past.add(old.scheduler.counters(), old.format.rate);
        }
        self.speech.get_or_insert_with(|| Speech {
            format,
            scheduler: Scheduler::new(format.channels as usize),
            stretcher: Signalsmith::new(format.rate),
        })
    }

    /// Renders one fragment of `input` (interleaved, `format`) into `out` (same length).
    /// `dub` is the answer in the stream's format at its own length, for dubbed fragments.
    pub fn render(
        &mut self,
        input: &[i16],
        format: Format,
        outcome: Outcome,
        dub: Option<&[i16]>,
        plan: &Plan,
        out: &mut [i16],
    ) -> Rendered {
        let ch = format.channels as usize;
        let frames = input.len() / ch.max(1);
        if plan.discont {
            self.seam.reset();
        }
        let fallback = match outcome {
            Outcome::Dubbed => None,
            Outcome::Fallback(_) => Some(plan.fallback),
            Outcome::Bypass | Outcome::Passthrough | Outcome::Gap => {
                Some(Signal::Original { gain: 1.0 })
            }
        };
        let dub = match outcome {
            Outcome::Dubbed => self.matched(input, format, dub, plan),
            _ => None,
        };
        let dub = dub.as_deref();
        if plan.mode == Mode::Trim {
            return self.render_trimmed(input, ch, frames, fallback, dub, plan, out);
        }

        let speech = self.speech_for(format);
        let mut placed = None;
        match (outcome, dub) {
            (Outcome::Dubbed, Some(d)) => {
                placed = speech.scheduler.place(
                    d,
                    frames,
                    &plan.policy,
                    &mut speech.stretcher as &mut dyn Stretcher,
                );
            }
            (Outcome::Bypass, _) => {
                speech.scheduler.clear();
            }
            _ => {}
        }
        if plan.last {
            speech
                .scheduler
                .fit_last(frames, &plan.policy, &mut speech.stretcher);
        }
        let slot = speech.scheduler.take(frames, plan.policy.fade);
        let n = slot.speech_end * ch;
        match fallback {
            None => mix::render(
                input,
                ch,
                plan.dub,
                Some(&slot.track),
                plan.crossfade,
                &mut self.seam,
                out,
            ),
            Some(signal) => {
                if n > 0 {
                    // Speech from earlier fragments runs on: over the ducked original.
                    let under = Signal::Dub {
                        original_gain: plan.under,
                    };
                    mix::render(
                        &input[..n],
                        ch,
                        under,
                        Some(&slot.track[..n]),
                        plan.crossfade,
                        &mut self.seam,
                        &mut out[..n],
                    );
                }
                mix::render(
                    &input[n..],
                    ch,
                    signal,
                    None,
                    plan.crossfade,
                    &mut self.seam,
                    &mut out[n..],
                );
            }
        }
        Rendered {
            fitted_frames: 0,
            placed,
            speech: slot.speech_end > 0,
        }
    }

    /// `overflow=trim`: the dub cut or zero-padded to the fragment.
    #[allow(clippy::too_many_arguments)]
    fn render_trimmed(
        &mut self,
        input: &[i16],
        ch: usize,
        frames: usize,
        fallback: Option<Signal>,
        dub: Option<&[i16]>,
        plan: &Plan,
        out: &mut [i16],
    ) -> Rendered {
        let mut fitted_frames = 0;
        let fitted = dub.map(|d| {
            if d.len() == input.len() {
                std::borrow::Cow::Borrowed(d)
            } else {
                let mut v = d.to_vec();
                fitted_frames = mix::fit_length(&mut v, frames, ch);
                std::borrow::Cow::Owned(v)
            }
        });
        let signal = fallback.unwrap_or(plan.dub);
        mix::render(
            input,
            ch,
            signal,
            fitted.as_deref(),
            plan.crossfade,
            &mut self.seam,
            out,
        );
        let placed = fitted.as_deref().and_then(|d| {
            super::overflow::speech_bounds(d, ch, plan.policy.window).map(|(start, end)| Placed {
                start,
                frames: end - start,
                tempo: 1.0,
                trimmed: 0,
            })
        });
        Rendered {
            fitted_frames,
            placed,
            speech: placed.is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stsbridge::response::Reason;

    /// One second at 16 kHz mono.
    const F: usize = 16000;
    const FMT: Format = Format {
        rate: 16000,
        channels: 1,
    };

    fn plan(mode: Mode) -> Plan {
        Plan {
            mode,
            policy: Policy {
                max_backlog: F * 3 / 2,
                max_tempo: 1.25,
                fade: 160,
                window: 160,
            },
            dub: Signal::Dub { original_gain: 0.0 },
            fallback: Signal::Original { gain: 1.0 },
            under: 0.25,
            crossfade: 160,
            discont: false,
            last: false,
            loudness: None,
        }
    }

    fn tone(frames: usize, amp: f64) -> Vec<i16> {
        (0..frames)
            .map(|i| (amp * (i as f64 * 0.11).sin()) as i16)
            .collect()
    }

    fn ns(frames: usize) -> u64 {
        frames as u64 * 1_000_000_000 / 16000
    }

    #[test]
    fn trim_mode_cuts_and_pads_as_before() {
        let mut o = Output::default();
        let input = tone(F, 100.0);
        let mut out = vec![0; F];
        let long = tone(F * 13 / 10, 5000.0);
        let p = plan(Mode::Trim);
        let r = o.render(&input, FMT, Outcome::Dubbed, Some(&long), &p, &mut out);
        assert_eq!(r.fitted_frames, -(F as i64) * 3 / 10);
        assert_eq!(out, long[..F]);
        let short = tone(F * 6 / 10, 5000.0);
        let r = o.render(&input, FMT, Outcome::Dubbed, Some(&short), &p, &mut out);
        assert_eq!(r.fitted_frames, F as i64 * 4 / 10);
        assert_eq!(out[..short.len()], short[..]);
        assert!(out[short.len()..].iter().all(|&v| v == 0));
    }

    #[test]
    fn compress_mode_lets_a_long_dub_finish_in_the_next_fragment() {
        let mut o = Output::default();
        let input = tone(F, 100.0);
        let mut out = vec![0; F];
        let long = tone(F * 13 / 10, 5000.0);
        let p = plan(Mode::Compress);
        let r = o.render(&input, FMT, Outcome::Dubbed, Some(&long), &p, &mut out);
        let placed = r.placed.unwrap();
        assert_eq!(placed.start + placed.frames, long.len());
        assert_eq!(out, long[..F]);
        // The next fragment falls back: the dub's last 0.3 s first, over the original ducked
        // (faded in over the crossfade), then the original.
        let r = o.render(
            &input,
            FMT,
            Outcome::Fallback(Reason::Timeout),
            None,
            &p,
            &mut out,
        );
        assert!(r.speech && r.placed.is_none());
        let rest = long.len() - F;
        // (The dub's abrupt end fades out over its last 160 frames.)
        for i in 160..rest - 160 {
            let want = f32::from(long[F + i]) + 0.25 * f32::from(input[i]);
            assert!((f32::from(out[i]) - want).abs() <= 1.0, "{i}");
        }
        // The speech itself is continuous across the fragments' seam.
        assert!((i32::from(out[0]) - i32::from(long[F])).abs() <= 2);
        // After the smoothing, the original at full level.
        assert_eq!(out[rest + 160..], input[rest + 160..]);
        let s = o.stats();
        assert_eq!(s.overflow_ns, ns(rest));
        assert_eq!((s.compressed_ns, s.trimmed_ns), (0, 0));
    }

    #[test]
    fn bypass_drops_the_queue_and_the_end_of_stream_fits_it() {
        let input = tone(F, 100.0);
        let mut out = vec![0; F];
        let p = plan(Mode::Compress);
        let mut o = Output::default();
        let long = tone(F * 14 / 10, 5000.0);
        o.render(&input, FMT, Outcome::Dubbed, Some(&long), &p, &mut out);
        o.render(&input, FMT, Outcome::Bypass, None, &p, &mut out);
        assert_eq!(out[160..], input[160..]);
        assert_eq!(o.stats().trimmed_ns, ns(F * 4 / 10));
        // The last fragment: 1.4 s into 1 s at 1.25× at most → 1.12 s, 0.12 s cut.
        let mut o = Output::default();
        let last = Plan { last: true, ..p };
        o.render(&input, FMT, Outcome::Dubbed, Some(&long), &last, &mut out);
        let s = o.stats();
        assert_eq!(s.trimmed_ns, ns(F * 12 / 100));
        assert_eq!(s.compressed_ns, ns(F * 28 / 100));
        assert_eq!(s.max_tempo, 1.25);
    }

    #[test]
    fn loudness_matching_brings_a_quiet_dub_up_and_leaves_an_echo_alone() {
        let mut o = Output::default();
        let p = Plan {
            loudness: Some(12.0),
            ..plan(Mode::Compress)
        };
        let input = tone(F, 4000.0);
        let mut out = vec![0; F];
        // An echo: exactly the input.
        o.render(&input, FMT, Outcome::Dubbed, Some(&input), &p, &mut out);
        assert_eq!(out, input);
        assert_eq!(o.stats().gain_db, 0.0);
        // A dub 10 dB quieter comes up by 10 dB (the smoothing halves the first step from 0).
        let mut o = Output::default();
        let quiet: Vec<i16> = input
            .iter()
            .map(|&s| (f64::from(s) * 0.316) as i16)
            .collect();
        for _ in 0..6 {
            o.render(&input, FMT, Outcome::Dubbed, Some(&quiet), &p, &mut out);
        }
        assert!(
            (o.stats().gain_db - 10.0).abs() < 0.2,
            "{}",
            o.stats().gain_db
        );
    }

    #[test]
    fn a_format_change_keeps_the_counters() {
        let mut o = Output::default();
        let p = plan(Mode::Compress);
        let mut out = vec![0; F];
        let long = tone(F * 12 / 10, 5000.0);
        o.render(
            &tone(F, 1.0),
            FMT,
            Outcome::Dubbed,
            Some(&long),
            &p,
            &mut out,
        );
        let stereo = Format::new(16000, 2);
        let mut out2 = vec![0; 2 * F];
        let d = tone(2 * F, 5000.0);
        o.render(
            &tone(2 * F, 1.0),
            stereo,
            Outcome::Dubbed,
            Some(&d),
            &p,
            &mut out2,
        );
        let s = o.stats();
        // 0.2 s ran over; 0.2 s were dropped at the change.
        assert_eq!(s.overflow_ns, ns(F / 5));
        assert_eq!(s.trimmed_ns, ns(F / 5));
    }
}
