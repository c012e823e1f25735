//! When `avoffset` releases held video, and what it reports about A/V sync, without GStreamer.
//! All times are running times in nanoseconds.

/// Why a held video buffer went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Audio covering its timestamp has gone out.
    AudioCovered,
    /// The audio stream ended (or is flushing): nothing more to wait for.
    AudioDone,
    /// An EOS is queued behind it: held video is flushed out before EOS.
    Draining,
    /// It waited `offset + max-hold` without audio (live: on the clock; files: in stream time,
    /// measured against the newest video).
    MaxHold,
}

impl Release {
    /// Whether the video went out without its audio.
    pub fn without_audio(self) -> bool {
        matches!(self, Release::MaxHold)
    }
}

/// What the video task should do with the oldest held buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Release(Release),
    /// Live: wait until this running time on the clock (or until audio arrives).
    WaitUntil(u64),
    /// Wait for audio (or more video, or EOS).
    Wait,
}

/// Inputs of the release decision.
#[derive(Debug, Clone, Copy, Default)]
pub struct Situation {
    /// Running time of the held video buffer.
    pub video_rt: u64,
    /// End of the audio that has gone out, in input running time.
    pub audio_pos: Option<u64>,
    pub audio_done: bool,
    pub eos_queued: bool,
    /// Running time of the newest video buffer received.
    pub newest_video_rt: u64,
    /// Live: the clock's running time now. `None` for files.
    pub now_rt: Option<u64>,
    pub offset: u64,
    pub max_hold: u64,
}

pub fn decide(s: &Situation) -> Decision {
    if s.audio_pos.is_some_and(|a| a >= s.video_rt) {
        return Decision::Release(Release::AudioCovered);
    }
    if s.audio_done {
        return Decision::Release(Release::AudioDone);
    }
    if s.eos_queued {
        return Decision::Release(Release::Draining);
    }
    let limit = s
        .video_rt
        .saturating_add(s.offset)
        .saturating_add(s.max_hold);
    match s.now_rt {
        Some(now) if now >= limit => Decision::Release(Release::MaxHold),
        Some(_) => Decision::WaitUntil(limit),
        None if s.newest_video_rt >= limit => Decision::Release(Release::MaxHold),
        None => Decision::Wait,
    }
}

/// The A/V delta sampled once per second of output.
#[derive(Debug, Clone, Default)]
pub struct SyncMeter {
    /// End of the last audio output, output running time.
    pub audio_end: Option<u64>,
    /// End of the last video output, output running time.
    pub video_end: Option<u64>,
    next_sample: Option<u64>,
    /// Last sampled delta (audio − video), ns.
    pub current: Option<i64>,
    /// Largest |delta| seen, ns.
    pub max_abs: u64,
    pub samples: u64,
}

pub const SAMPLE_PERIOD: u64 = 1_000_000_000;

impl SyncMeter {
    pub fn audio_out(&mut self, end: u64) {
        self.audio_end = Some(self.audio_end.map_or(end, |a| a.max(end)));
    }

    /// Records a video output ending at `end`; returns the delta when a sample is due (the
    /// first video output, then every [`SAMPLE_PERIOD`] of video).
    pub fn video_out(&mut self, end: u64) -> Option<i64> {
        self.video_end = Some(end);
        let due = self.next_sample.is_none_or(|n| end >= n);
        if !due {
            return None;
        }
        let audio = self.audio_end?;
        self.next_sample = Some(end + SAMPLE_PERIOD);
        let d = audio as i128 - end as i128;
        let d = d.clamp(i64::MIN as i128, i64::MAX as i128) as i64;
        self.current = Some(d);
        self.max_abs = self.max_abs.max(d.unsigned_abs());
        self.samples += 1;
        Some(d)
    }

    pub fn reset(&mut self) {
        *self = SyncMeter {
            max_abs: self.max_abs,
            samples: self.samples,
            ..Default::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn base() -> Situation {
        Situation {
            video_rt: 10 * S,
            offset: 6 * S,
            max_hold: S,
            newest_video_rt: 10 * S,
            ..Default::default()
        }
    }

    #[test]
    fn audio_covering_releases() {
        let mut s = base();
        assert_eq!(decide(&s), Decision::Wait);
        s.audio_pos = Some(10 * S - 1);
        assert_eq!(decide(&s), Decision::Wait);
        s.audio_pos = Some(10 * S);
        assert_eq!(decide(&s), Decision::Release(Release::AudioCovered));
    }

    #[test]
    fn live_max_hold_on_the_clock() {
        let mut s = base();
        s.now_rt = Some(12 * S);
        assert_eq!(decide(&s), Decision::WaitUntil(17 * S));
        s.now_rt = Some(17 * S);
        let d = decide(&s);
        assert_eq!(d, Decision::Release(Release::MaxHold));
        assert!(matches!(d, Decision::Release(r) if r.without_audio()));
    }

    #[test]
    fn file_max_hold_in_stream_time() {
        let mut s = base();
        s.newest_video_rt = 16 * S;
        assert_eq!(decide(&s), Decision::Wait);
        s.newest_video_rt = 17 * S;
        assert_eq!(decide(&s), Decision::Release(Release::MaxHold));
    }

    #[test]
    fn eos_and_audio_end_release_everything() {
        let mut s = base();
        s.eos_queued = true;
        assert_eq!(decide(&s), Decision::Release(Release::Draining));
        let mut s = base();
        s.audio_done = true;
        assert_eq!(decide(&s), Decision::Release(Release::AudioDone));
        assert!(!Release::AudioDone.without_audio());
    }

    #[test]
    fn sync_samples_once_per_second() {
        let mut m = SyncMeter::default();
        assert_eq!(m.video_out(S), None, "no audio yet");
        m.audio_out(2 * S);
        assert_eq!(m.video_out(S + 40_000_000), Some(960_000_000));
        assert_eq!(m.video_out(S + 80_000_000), None);
        m.audio_out(S + 500_000_000);
        assert_eq!(m.audio_end, Some(2 * S), "audio end never goes back");
        assert_eq!(m.video_out(2 * S + 40_000_000), Some(-40_000_000));
        assert_eq!(m.max_abs, 960_000_000);
        assert_eq!(m.current, Some(-40_000_000));
        assert_eq!(m.samples, 2);
    }
}
