//! The RTMP publications, one per language, each in a small pipeline of its own:
//!
//! ```text
//! main pipeline:   … ! flvmux name=mux0 ! appsink name=out0 sync=true      (paced, never blocks)
//! publication 0:   appsrc (flvmux's caps, leaky, bounded) ! rtmpsink sync=false
//! ```
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
use tracing::{info, warn};

use crate::log::redact_url;
use crate::sockets::SendQueue;

/// How much a publication queues while its server does not take it (≈ 15 s of a 2 Mbit/s
/// stream); past it the oldest data is dropped.
pub const QUEUE_BYTES: u64 = 4 << 20;

/// Whether an FLV tag (one `flvmux` buffer) is a video keyframe: tag type 9, frame type 1.
pub fn is_video_keyframe_tag(tag: &[u8]) -> bool {
    tag.len() > 11 && tag[0] == 9 && tag[11] >> 4 == 1
}

/// The wait before reconnection attempt `attempt` (0-based): 1, 2, 4, 8, then 10 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs((1u64 << attempt.min(4)).min(10))
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
#[derive(Default)]
pub struct Feed {
    inner: Mutex<FeedInner>,
}

impl Feed {
    /// Whether tags reach a publication now (the published delay only counts those).
    pub fn is_open(&self) -> bool {
        self.inner.lock().unwrap().gate == Some(Gate::Open)
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
            // The caps' streamheader carries the header tags; rtmpsink sends it itself.
            if buffer.flags().contains(gst::BufferFlags::HEADER) {
                drop(i);
                if let Some((src, caps)) = new_caps {
                    src.set_caps(Some(&caps));
                }
                return;
            }
            if i.gate == Some(Gate::Keyframe)
                && buffer
                    .map_readable()
                    .is_ok_and(|m| is_video_keyframe_tag(&m))
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

/// One connection to the RTMP server: `appsrc ! rtmpsink`.
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
}

impl Sender {
    fn start(url: &str, peer: Option<std::net::SocketAddr>) -> Result<Sender, String> {
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
        let sink = make("rtmpsink")?;
        // Paced by the main pipeline: send at once.
        sink.set_property("sync", false);
        sink.set_property("async", false);
        sink.set_property("location", format!("{url} live=1"));
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
                if let gst::MessageView::Error(e) = msg.view() {
                    return Some(format!("{} ({:?})", e.error(), e.debug()));
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
        let last = self.taken.lock().unwrap().0.unwrap_or(self.started);
        let waiting = self.appsrc.current_level_bytes() > 0;
        if waiting && now.saturating_duration_since(last) > timeout {
            return Some(format!(
                "nothing taken for {} ms with {} bytes waiting (connecting or writing blocked)",
                now.saturating_duration_since(last).as_millis(),
                self.appsrc.current_level_bytes()
            ));
        }
        None
    }

    /// Stops the connection: its socket shut down first (a thread blocked on a frozen
    /// server returns), then the pipeline set to NULL, waiting for it up to `limit` (zero:
    /// on a thread of its own, not waited for: the worker loop never waits on a dead server).
    fn stop(mut self, limit: Duration) {
        if let Some(q) = self.queue.as_mut() {
            q.shut_down();
        }
        if limit.is_zero() {
            let p = self.pipeline.clone();
            std::thread::spawn(move || {
                let _ = p.set_state(gst::State::Null);
            });
        } else {
            crate::run::shutdown(&self.pipeline, limit);
        }
    }

    /// Whether the end of stream got through (`rtmpsink` finished), waiting up to `limit`.
    fn wait_eos(&self, limit: Duration) -> bool {
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

/// Where a publication is.
enum Link {
    /// Connecting (`outage`: since when it has been down, if this is a reconnection).
    Connecting {
        sender: Sender,
        outage: Option<Instant>,
        attempt: u32,
    },
    Up(Sender),
    /// Down since `since`, next attempt at `retry`.
    Down {
        since: Instant,
        retry: Instant,
        attempt: u32,
    },
    Finished,
}

/// What [`Publication::tick`] has to report.
pub enum Event {
    /// Nothing new.
    None,
    /// A reconnection attempt started.
    Reconnecting,
    /// Down for longer than the grace: the worker gives up.
    GaveUp(String),
}

/// One language's RTMP publication.
pub struct Publication {
    url: String,
    peer: Option<std::net::SocketAddr>,
    feed: Arc<Feed>,
    link: Link,
    timeout: Duration,
    grace: Duration,
}

impl Publication {
    /// A publication of the main pipeline's `sink` to `url`, connected at once.
    pub fn start(
        url: &str,
        sink: &gst_app::AppSink,
        timeout: Duration,
        grace: Duration,
    ) -> Result<Publication, String> {
        use std::net::ToSocketAddrs;
        let peer = url::Url::parse(url).ok().and_then(|u| {
            let host = u.host_str()?.to_string();
            (host.as_str(), u.port().unwrap_or(1935))
                .to_socket_addrs()
                .ok()?
                .next()
        });
        let feed = Arc::new(Feed::default());
        feed.attach(sink);
        let sender = Sender::start(url, peer)?;
        // The first session starts with the stream itself (a keyframe).
        feed.route(Some(sender.appsrc.clone()), true);
        Ok(Publication {
            url: url.to_string(),
            peer,
            feed,
            link: Link::Connecting {
                sender,
                outage: None,
                attempt: 0,
            },
            timeout,
            grace,
        })
    }

    pub fn feed(&self) -> Arc<Feed> {
        self.feed.clone()
    }

    /// Whether the publication is connected and taking data.
    pub fn is_up(&self) -> bool {
        matches!(self.link, Link::Up(_))
    }

    /// Watches the connection, reconnects when due. Call a few times a second.
    pub fn tick(&mut self, now: Instant, stream_id: &str) -> Event {
        let url = redact_url(&self.url);
        let link = std::mem::replace(&mut self.link, Link::Finished);
        let (link, event) = match link {
            Link::Connecting {
                mut sender,
                outage,
                attempt,
            } => match sender.failure(now, self.timeout) {
                Some(why) => {
                    warn!(stream_id, "output {url}: cannot publish: {why}");
                    self.down(sender, outage.unwrap_or(now), attempt + 1, now)
                }
                None if sender.connected() => {
                    if let Some(from) = outage {
                        info!(
                            stream_id,
                            outage_ms = now.saturating_duration_since(from).as_millis() as u64,
                            "output {url} republished after an outage of {} ms (a new RTMP session from a keyframe)",
                            now.saturating_duration_since(from).as_millis()
                        );
                    }
                    (Link::Up(sender), Event::None)
                }
                None => (
                    Link::Connecting {
                        sender,
                        outage,
                        attempt,
                    },
                    Event::None,
                ),
            },
            Link::Up(mut sender) => match sender.failure(now, self.timeout) {
                Some(why) => {
                    warn!(
                        stream_id,
                        "output outage: {url}: {why}; reconnecting for up to {} ms",
                        self.grace.as_millis()
                    );
                    self.down(sender, now, 0, now)
                }
                None => (Link::Up(sender), Event::None),
            },
            Link::Down {
                since,
                retry,
                attempt,
            } if now >= retry => {
                if now.saturating_duration_since(since) > self.grace {
                    let why = format!(
                        "output outage: {url} down for {} ms, past WORKER_OUTPUT_GRACE_MS",
                        now.saturating_duration_since(since).as_millis()
                    );
                    (Link::Finished, Event::GaveUp(why))
                } else if !self.feed.caps_known() {
                    (
                        Link::Down {
                            since,
                            retry: now + backoff(attempt),
                            attempt,
                        },
                        Event::None,
                    )
                } else {
                    match Sender::start(&self.url, self.peer) {
                        Ok(sender) => {
                            info!(
                                stream_id,
                                "output {url}: reconnecting (attempt {})", attempt
                            );
                            self.feed.route(Some(sender.appsrc.clone()), false);
                            (
                                Link::Connecting {
                                    sender,
                                    outage: Some(since),
                                    attempt,
                                },
                                Event::Reconnecting,
                            )
                        }
                        Err(e) => {
                            warn!(stream_id, "output {url}: {e}");
                            (
                                Link::Down {
                                    since,
                                    retry: now + backoff(attempt),
                                    attempt: attempt + 1,
                                },
                                Event::None,
                            )
                        }
                    }
                }
            }
            other => (other, Event::None),
        };
        self.link = link;
        event
    }

    /// Tears `sender` down; the next attempt after the backoff of `attempt`.
    fn down(&self, sender: Sender, since: Instant, attempt: u32, now: Instant) -> (Link, Event) {
        self.feed.route(None, false);
        sender.stop(Duration::ZERO);
        (
            Link::Down {
                since,
                retry: now + backoff(attempt),
                attempt,
            },
            Event::None,
        )
    }

    /// At the end of the stream: waits up to `limit` for what is queued to get out (the
    /// feed has passed the end of stream on), then stops.
    pub fn finish(&mut self, limit: Duration) -> bool {
        let done = match std::mem::replace(&mut self.link, Link::Finished) {
            Link::Up(s) | Link::Connecting { sender: s, .. } => {
                let ok = s.wait_eos(limit);
                s.stop(Duration::from_secs(2));
                ok
            }
            _ => false,
        };
        self.feed.route(None, false);
        done
    }
}

impl Drop for Publication {
    fn drop(&mut self) {
        if let Link::Up(s) | Link::Connecting { sender: s, .. } =
            std::mem::replace(&mut self.link, Link::Finished)
        {
            s.stop(Duration::ZERO);
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

    #[test]
    fn backoff_doubles_to_ten_seconds() {
        let waits: Vec<u64> = (0..7).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10, 10]);
    }
}
