//! The publications, each in a small pipeline of its own: RTMP, one per language, or one SRT
//! publication carrying every language (MPEG-TS):
//!
//! ```text
//! main pipeline:   … ! flvmux name=mux0 ! appsink name=out0 sync=true      (paced, never blocks)
//! publication 0:   appsrc (flvmux's caps, leaky, bounded) ! rtmpsink sync=false
//! SRT:             … ! mpegtsmux name=tsmux ! appsink name=out sync=true
//!                  appsrc (leaky, bounded) ! srtsink mode=caller sync=false
//! ```
//!
//! SRT is handled as RTMP is: `srtsink`'s errors (no listener: "Connection does not exist"
//! after SRT's ~3 s connection timeout; a broken connection) and a sink that takes nothing
//! are output outages, reconnected the same way. A new SRT connection starts at a video
//! random access point of the transport stream (the PAT and PMT come with it, every 100 ms),
//! and the end of the stream is held before `srtsink` for twice the SRT latency so that its
//! last packets are delivered ([`gstdubbing::tsoutput::linger_before_close`]).
//!
//! The main pipeline paces the stream (its appsink syncs on the clock, as `rtmpsink` did) and
//! hands each FLV tag to the publication's `appsrc`, which never blocks: a frozen or gone RTMP
//! server cannot stall the dubbing, and its memory stays bounded (`appsrc` drops its oldest
//! data past [`QUEUE_BYTES`]). A publication that fails (an error from `rtmpsink`, a send
//! queue that does not drain, or nothing taken at all for `WORKER_OUTPUT_TIMEOUT_MS`) is an
//! output outage: its socket is shut down (which frees a thread blocked on a frozen server),
//! its pipeline left to stop, and a new one is connected after 1, 2, 4, 8, 10, 10 … s for up
//! to `WORKER_OUTPUT_GRACE_MS`. The new RTMP session starts with the FLV header and sequence
//! headers (`rtmpsink` sends the caps' `streamheader` first) and the next video keyframe:
//! what fell into the gap is dropped, and the FLV timestamps go on from where the stream is
//! (a player joining sees the stream's own timeline). The dubbing state (breakers, counters,
//! the offset) lives in the main pipeline and is untouched.
//!
//! Lock order: [`Feed::inner`] is the only lock; nothing is pushed, posted or queried while
//! it is held.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;

use gstdubbing::tsoutput::{self, SrtPublish};

use crate::pipeline::LiveUrls;
use crate::sockets::SendQueue;

/// How much a publication queues while its server does not take it (≈ 15 s of a 2 Mbit/s
/// stream); past it the oldest data is dropped.
pub const QUEUE_BYTES: u64 = 4 << 20;

/// Whether an FLV tag (one `flvmux` buffer) is a video keyframe: tag type 9, frame type 1.
pub fn is_video_keyframe_tag(tag: &[u8]) -> bool {
    tag.len() > 11 && tag[0] == 9 && tag[11] >> 4 == 1
}

/// Whether a run of MPEG-TS packets holds the start of a video random access point: a
/// packet of the video PID ([`tsoutput::VIDEO_PID`]) starting a PES packet, with the
/// adaptation field's `random_access_indicator` set (what `mpegtsmux` writes on keyframes).
pub fn is_ts_random_access(data: &[u8]) -> bool {
    data.chunks_exact(188).any(|p| {
        let pid = (u32::from(p[1] & 0x1f) << 8) | u32::from(p[2]);
        let unit_start = p[1] & 0x40 != 0;
        let adaptation = p[3] & 0x20 != 0;
        p[0] == 0x47
            && pid == tsoutput::VIDEO_PID
            && unit_start
            && adaptation
            && p[4] > 0
            && p[5] & 0x40 != 0
    })
}

/// What a publication carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// FLV tags (RTMP): `rtmpsink` sends the caps' stream header itself.
    Flv,
    /// MPEG-TS packets (SRT).
    Ts,
}

/// What reaches the publication from the main pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// No publication: tags are dropped.
    Closed,
    /// A new publication: drop until a video keyframe, then open.
    Keyframe,
    /// Every tag goes out.
    Open,
}

#[derive(Default)]
struct FeedInner {
    caps: Option<gst::Caps>,
    appsrc: Option<gst_app::AppSrc>,
    gate: Option<Gate>,
    /// `caps` are set on `appsrc`.
    caps_set: bool,
    /// The main pipeline's stream ended: publications get their end of stream.
    ended: bool,
}

/// Shared between the main pipeline's appsink (its streaming thread) and the worker loop.
pub struct Feed {
    inner: Mutex<FeedInner>,
    format: Format,
}

impl Feed {
    /// Whether tags reach a publication now (the published delay only counts those).
    pub fn is_open(&self) -> bool {
        self.inner.lock().unwrap().gate == Some(Gate::Open)
    }

    fn new(format: Format) -> Feed {
        Feed {
            inner: Mutex::default(),
            format,
        }
    }

    /// Where a new connection may start: an FLV video keyframe tag, or MPEG-TS packets
    /// starting a video random access point.
    fn starts_here(&self, data: &[u8]) -> bool {
        match self.format {
            Format::Flv => is_video_keyframe_tag(data),
            Format::Ts => is_ts_random_access(data),
        }
    }

    fn on_sample(&self, sample: &gst::Sample) {
        let Some(buffer) = sample.buffer_owned() else {
            return;
        };
        let (target, new_caps) = {
            let mut i = self.inner.lock().unwrap();
            let mut new_caps = None;
            if let Some(caps) = sample.caps()
                && (i.caps.as_ref() != Some(&caps.to_owned()) || !i.caps_set)
            {
                i.caps = Some(caps.to_owned());
                // The publication's rtmpsink sends the caps' streamheader first.
                if let Some(src) = &i.appsrc {
                    new_caps = Some((src.clone(), caps.to_owned()));
                    i.caps_set = true;
                }
            }
            // The caps' streamheader carries the header tags; rtmpsink sends it itself. (An
            // MPEG-TS header is the PAT and PMT, repeated in the stream: it goes through.)
            if self.format == Format::Flv && buffer.flags().contains(gst::BufferFlags::HEADER) {
                drop(i);
                if let Some((src, caps)) = new_caps {
                    src.set_caps(Some(&caps));
                }
                return;
            }
            if i.gate == Some(Gate::Keyframe)
                && buffer.map_readable().is_ok_and(|m| self.starts_here(&m))
            {
                i.gate = Some(Gate::Open);
            }
            let target = match i.gate {
                Some(Gate::Open) => i.appsrc.clone(),
                _ => None,
            };
            (target, new_caps)
        };
        if let Some((src, caps)) = new_caps {
            src.set_caps(Some(&caps));
        }
        if let Some(src) = target {
            // Never blocks: the appsrc is leaky.
            let _ = src.push_buffer(buffer);
        }
    }

    fn on_eos(&self) {
        let src = {
            let mut i = self.inner.lock().unwrap();
            i.ended = true;
            i.appsrc.clone()
        };
        if let Some(src) = src {
            let _ = src.end_of_stream();
        }
    }

    /// Connects the main pipeline's `appsink` to this feed.
    pub fn attach(self: &Arc<Self>, sink: &gst_app::AppSink) {
        let (a, b) = (self.clone(), self.clone());
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |s| {
                    if let Ok(sample) = s.pull_sample() {
                        a.on_sample(&sample);
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .eos(move |_| b.on_eos())
                .build(),
        );
    }

    /// Routes the feed to `src` (`None`: nowhere), through the keyframe gate unless `open`.
    fn route(&self, src: Option<gst_app::AppSrc>, open: bool) {
        let (ended, caps) = {
            let mut i = self.inner.lock().unwrap();
            i.gate = Some(match (&src, open) {
                (None, _) => Gate::Closed,
                (Some(_), true) => Gate::Open,
                (Some(_), false) => Gate::Keyframe,
            });
            i.appsrc = src.clone();
            i.caps_set = src.is_some() && i.caps.is_some();
            (i.ended, i.caps.clone())
        };
        if let Some(s) = src {
            if let Some(caps) = caps {
                s.set_caps(Some(&caps));
            }
            if ended {
                let _ = s.end_of_stream();
            }
        }
    }

    fn caps_known(&self) -> bool {
        self.inner.lock().unwrap().caps.is_some()
    }
}

/// Where a publication goes.
#[derive(Clone)]
enum Target {
    Rtmp(String),
    Srt(SrtPublish),
}

/// One connection to the server: `appsrc ! rtmpsink` or `appsrc ! srtsink`.
struct Sender {
    pipeline: gst::Pipeline,
    appsrc: gst_app::AppSrc,
    /// When `rtmpsink` last took a buffer, and how many it took.
    taken: Arc<Mutex<(Option<Instant>, u64)>>,
    started: Instant,
    queue: Option<SendQueue>,
    /// Since when the send queue has not drained, and its size then.
    full_since: Option<(Instant, u64)>,
    sampled: Option<Instant>,
    queued: u64,
    /// Since when data has been waiting in `appsrc`.
    waiting_since: Option<Instant>,
    /// `rtmpsink` finished the stream (its end of stream, seen on the bus).
    eos: bool,
}

impl Sender {
    fn start(target: &Target, peer: Option<std::net::SocketAddr>) -> Result<Sender, String> {
        let make = |f: &str| {
            gst::ElementFactory::make(f)
                .build()
                .map_err(|_| format!("no {f} element (gst-plugins-base/-bad)"))
        };
        let appsrc = make("appsrc")?
            .downcast::<gst_app::AppSrc>()
            .map_err(|_| "appsrc is not an AppSrc".to_string())?;
        appsrc.set_is_live(true);
        appsrc.set_format(gst::Format::Time);
        appsrc.set_max_bytes(QUEUE_BYTES);
        appsrc.set_property_from_str("leaky-type", "downstream");
        let sink = match target {
            Target::Rtmp(url) => {
                let sink = make("rtmpsink")?;
                sink.set_property("location", format!("{url} live=1"));
                sink
            }
            Target::Srt(srt) => {
                let sink = make("srtsink")?;
                sink.set_property("uri", srt.uri());
                sink.set_property_from_str("mode", "caller");
                sink.set_property("latency", srt.latency_ms.min(i32::MAX as u32) as i32);
                if let Some(id) = &srt.streamid {
                    sink.set_property("streamid", id);
                }
                if let Some(p) = &srt.passphrase {
                    sink.set_property("passphrase", p);
                }
                tsoutput::linger_before_close(&sink, srt.linger());
                sink
            }
        };
        // Paced by the main pipeline: send at once.
        sink.set_property("sync", false);
        sink.set_property("async", false);
        let pipeline = gst::Pipeline::new();
        pipeline
            .add_many([appsrc.upcast_ref(), &sink])
            .and_then(|_| appsrc.link(&sink))
            .map_err(|e| format!("cannot build the publication: {e}"))?;
        let taken = Arc::new(Mutex::new((None, 0u64)));
        if let Some(pad) = sink.static_pad("sink") {
            let taken = taken.clone();
            pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                let mut t = taken.lock().unwrap();
                *t = (Some(Instant::now()), t.1 + 1);
                gst::PadProbeReturn::Ok
            });
        }
        pipeline
            .set_state(gst::State::Playing)
            .map_err(|e| format!("cannot start the publication: {e}"))?;
        Ok(Sender {
            pipeline,
            appsrc,
            taken,
            started: Instant::now(),
            queue: peer.map(SendQueue::new),
            full_since: None,
            sampled: None,
            queued: 0,
            waiting_since: None,
            eos: false,
        })
    }

    /// Two buffers taken: the first (which opened the RTMP session) went through.
    fn connected(&self) -> bool {
        self.taken.lock().unwrap().1 >= 2
    }

    /// Why this connection is failing, if it is: an error on its bus, a send queue that has
    /// not drained for `timeout` (a frozen server still takes the first megabytes into its
    /// socket buffers), or data waiting that `rtmpsink` has not taken for `timeout` (blocked
    /// connecting or writing).
    fn failure(&mut self, now: Instant, timeout: Duration) -> Option<String> {
        if let Some(bus) = self.pipeline.bus() {
            while let Some(msg) = bus.pop() {
                match msg.view() {
                    gst::MessageView::Error(e) => {
                        return Some(format!("{} ({:?})", e.error(), e.debug()));
                    }
                    // The end of the stream got out ([`Sender::wait_eos`]).
                    gst::MessageView::Eos(_) => self.eos = true,
                    _ => {}
                }
            }
        }
        if self
            .sampled
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_millis(250))
        {
            self.sampled = Some(now);
            let q = self.queue.as_mut().and_then(|q| q.bytes()).unwrap_or(0);
            self.queued = q;
            self.full_since = match self.full_since {
                _ if q == 0 => None,
                Some((_, at)) if q < at => Some((now, q)),
                Some(f) => Some(f),
                None => Some((now, q)),
            };
        }
        if let Some((since, _)) = self.full_since
            && now.saturating_duration_since(since) > timeout
        {
            return Some(format!(
                "the server has taken nothing of the {} bytes queued to it for {} ms (frozen)",
                self.queued,
                now.saturating_duration_since(since).as_millis()
            ));
        }
        // Nothing taken for the timeout while data waits: counted from when it last took
        // something, or from when data started waiting (the first data comes an offset
        // after the connection is made).
        let waiting = self.appsrc.current_level_bytes() > 0;
        self.waiting_since = if waiting {
            Some(self.waiting_since.unwrap_or(now))
        } else {
            None
        };
        let last = self
            .taken
            .lock()
            .unwrap()
            .0
            .unwrap_or(self.started)
            .max(self.waiting_since.unwrap_or(now));
        if waiting && now.saturating_duration_since(last) > timeout {
            return Some(format!(
                "nothing taken for {} ms with {} bytes waiting (connecting or writing blocked)",
                now.saturating_duration_since(last).as_millis(),
                self.appsrc.current_level_bytes()
            ));
        }
        None
    }

    /// Drops the connection: its socket shut down first (a thread blocked on a frozen
    /// server returns), then the pipeline set to NULL on a thread of its own, not waited for
    /// (the worker loop never waits on a dead server).
    fn abort(mut self) {
        if let Some(q) = self.queue.as_mut() {
            q.shut_down();
        }
        let p = self.pipeline.clone();
        std::thread::spawn(move || {
            let _ = p.set_state(gst::State::Null);
        });
    }

    /// Closes the connection as a publisher ends: `rtmpsink` stops, which unpublishes the
    /// stream (`FCUnpublish`, `deleteStream`) before closing the socket, so the server tells
    /// its subscribers that the publication ended. Waits up to `limit`; past it (a frozen
    /// server) the socket is shut down.
    fn close(mut self, limit: Duration) -> bool {
        let p = self.pipeline.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = p.set_state(gst::State::Null);
            let _ = tx.send(());
        });
        if rx.recv_timeout(limit).is_ok() {
            return true;
        }
        if let Some(q) = self.queue.as_mut() {
            q.shut_down();
        }
        false
    }

    /// Whether the end of stream got through (`rtmpsink` finished), waiting up to `limit`.
    fn wait_eos(&self, limit: Duration) -> bool {
        if self.eos {
            return true;
        }
        let Some(bus) = self.pipeline.bus() else {
            return false;
        };
        let deadline = Instant::now() + limit;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Some(msg) = bus.timed_pop(gst::ClockTime::from_nseconds(left.as_nanos() as u64))
            else {
                break;
            };
            match msg.view() {
                gst::MessageView::Eos(_) => return true,
                gst::MessageView::Error(_) => return false,
                _ => {}
            }
        }
        false
    }
}

/// What [`Publication::check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The connection is publishing (reported once per connection).
    Connected,
    /// The connection cannot publish.
    Failed(String),
}

/// One publication (one language's RTMP, or the SRT one with every language): its feed from
/// the main pipeline and its current connection. When to connect and drop is the
/// supervisor's ([`crate::supervisor`]).
pub struct Publication {
    url: String,
    target: Target,
    peer: Option<std::net::SocketAddr>,
    feed: Arc<Feed>,
    sender: Option<Sender>,
    /// [`Report::Connected`] was given for the current connection.
    reported: bool,
}

impl Publication {
    /// A publication of the main pipeline's `sink` to `url` (rtmp:// or srt://), connected
    /// at once.
    pub fn start(url: &str, sink: &gst_app::AppSink) -> Result<Publication, String> {
        use std::net::ToSocketAddrs;
        let (target, format) = if url.starts_with("srt://") {
            (Target::Srt(SrtPublish::from_url(url)?), Format::Ts)
        } else {
            (Target::Rtmp(url.to_string()), Format::Flv)
        };
        // The TCP connection's send queue tells a frozen RTMP server (SRT is UDP: its own
        // timeouts tell, as errors).
        let peer = match &target {
            Target::Rtmp(_) => url::Url::parse(url).ok().and_then(|u| {
                let host = u.host_str()?.to_string();
                (host.as_str(), u.port().unwrap_or(1935))
                    .to_socket_addrs()
                    .ok()?
                    .next()
            }),
            Target::Srt(_) => None,
        };
        let feed = Arc::new(Feed::new(format));
        feed.attach(sink);
        let sender = Sender::start(&target, peer)?;
        // The first session starts with the stream itself (a keyframe).
        feed.route(Some(sender.appsrc.clone()), true);
        Ok(Publication {
            url: url.to_string(),
            target,
            peer,
            feed,
            sender: Some(sender),
            reported: false,
        })
    }

    pub fn feed(&self) -> Arc<Feed> {
        self.feed.clone()
    }

    /// The URL, redacted.
    pub fn name(&self) -> String {
        LiveUrls::display_output(&self.url)
    }

    /// A new connection (after an outage): a new RTMP session from the stream's header and
    /// its next keyframe, or a new SRT connection from the next video random access point.
    pub fn connect(&mut self) -> Result<(), String> {
        if let Some(old) = self.sender.take() {
            old.abort();
        }
        if !self.feed.caps_known() {
            return Err("no stream to publish yet".into());
        }
        let sender = Sender::start(&self.target, self.peer)?;
        self.feed.route(Some(sender.appsrc.clone()), false);
        self.sender = Some(sender);
        self.reported = false;
        Ok(())
    }

    /// Drops the connection (an outage): nothing reaches it any more.
    pub fn drop_connection(&mut self) {
        self.feed.route(None, false);
        if let Some(s) = self.sender.take() {
            s.abort();
        }
    }

    /// Watches the connection (a few times a second): whether it started publishing or
    /// fails; `timeout` is `WORKER_OUTPUT_TIMEOUT_MS`.
    pub fn check(&mut self, now: Instant, timeout: Duration) -> Option<Report> {
        let sender = self.sender.as_mut()?;
        if let Some(why) = sender.failure(now, timeout) {
            return Some(Report::Failed(why));
        }
        if !self.reported && sender.connected() {
            self.reported = true;
            return Some(Report::Connected);
        }
        None
    }

    /// At the end of the stream: waits up to `limit` for what is queued to get out (the
    /// feed has passed the end of stream on), then closes the RTMP session as a publisher
    /// ends it (the server tells its subscribers). Returns whether all of it got out.
    pub fn finish(&mut self, limit: Duration) -> bool {
        let done = match self.sender.take() {
            Some(s) => {
                let ok = s.wait_eos(limit);
                let closed = s.close(Duration::from_secs(2));
                ok && closed
            }
            None => false,
        };
        self.feed.route(None, false);
        done
    }
}

impl Drop for Publication {
    fn drop(&mut self) {
        if let Some(s) = self.sender.take() {
            s.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyframe_tags() {
        // An FLV video tag header (11 bytes) and the AVC frame-type/codec byte.
        let mut tag = vec![9u8, 0, 0, 5, 0, 0, 40, 0, 0, 0, 0, 0x17, 1, 0, 0, 0];
        assert!(is_video_keyframe_tag(&tag));
        tag[11] = 0x27; // inter frame
        assert!(!is_video_keyframe_tag(&tag));
        tag[0] = 8; // audio
        tag[11] = 0x17;
        assert!(!is_video_keyframe_tag(&tag));
        assert!(!is_video_keyframe_tag(&tag[..11]));
    }

    /// A TS packet of `pid`: payload start, adaptation field with `flags`.
    fn ts_packet(pid: u16, unit_start: bool, flags: u8) -> Vec<u8> {
        let mut p = vec![0xffu8; 188];
        p[0] = 0x47;
        p[1] = (if unit_start { 0x40 } else { 0 }) | ((pid >> 8) as u8 & 0x1f);
        p[2] = pid as u8;
        p[3] = 0x30; // adaptation field and payload
        p[4] = 7;
        p[5] = flags;
        p
    }

    #[test]
    fn ts_random_access_points() {
        // Audio then a video keyframe's first packet (random access, PCR).
        let mut run = ts_packet(0x101, true, 0x40);
        run.extend(ts_packet(0x100, true, 0x50));
        assert!(is_ts_random_access(&run));
        // A video packet without the indicator, or one continuing a PES packet.
        assert!(!is_ts_random_access(&ts_packet(0x100, true, 0x10)));
        assert!(!is_ts_random_access(&ts_packet(0x100, false, 0x40)));
        // Audio random access is not where video can start.
        assert!(!is_ts_random_access(&ts_packet(0x101, true, 0x40)));
        assert!(!is_ts_random_access(&run[..100]));
    }
}
