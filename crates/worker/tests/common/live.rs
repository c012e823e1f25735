//! Harness of the live tests: real servers on 127.0.0.1, each stopped by its `Drop`.
//!
//! - [`RtspServer`]: GStreamer's RTSP server library serving a file in real time on its own
//!   GLib main context thread; records when each audio buffer leaves it (for delay
//!   measurements).
//! - [`NginxRtmp`]: Debian's nginx + `libnginx-mod-rtmp` with its own config in a temp dir,
//!   plus a loopback HTTP port for `rtmp_stat` / `rtmp_control`.
//! - [`RtmpCapture`]: an `ffmpeg` subscriber copying a stream to a file and, at the same
//!   time, decoding its audio to PCM whose arrival times are recorded.
//! - [`Proc`]: a child process with its stderr logged (to a file and in memory), stopped
//!   with SIGTERM then SIGKILL.
//! - [`scrape`] / [`Metrics`]: `GET /metrics` over a plain `TcpStream`, parsed with
//!   `prometheus-parse`.
//!
//! Reusable by chaos and soak tests: nothing here knows about a particular scenario.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst_rtsp_server::prelude::*;

pub const NGINX_RTMP_MODULE: &str = "/usr/lib/nginx/modules/ngx_rtmp_module.so";

/// `CI` is set (and not `false`/`0`): a missing server or tool fails the test instead of
/// skipping it.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// `Ok`: go on. `Err(why)`: in CI panics, elsewhere prints why the test is skipped and
/// returns `false`.
pub fn require(check: Result<(), String>) -> bool {
    match check {
        Ok(()) => true,
        Err(why) if in_ci() => panic!("live test cannot run in CI: {why}"),
        Err(why) => {
            eprintln!("SKIPPED (set CI=1 to make this a failure): {why}");
            false
        }
    }
}

/// Whether `prog` can be run (found in `PATH` and executable).
pub fn have_program(prog: &str) -> bool {
    Command::new(prog)
        .arg("-h")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// The external tools and GStreamer elements the live tests use.
pub fn check_environment() -> Result<(), String> {
    let mut missing = Vec::new();
    for prog in ["nginx", "ffmpeg", "ffprobe"] {
        if !have_program(prog) {
            missing.push(format!("program {prog}"));
        }
    }
    if !Path::new(NGINX_RTMP_MODULE).is_file() {
        missing.push(format!("{NGINX_RTMP_MODULE} (libnginx-mod-rtmp)"));
    }
    gst::init().map_err(|e| e.to_string())?;
    for element in [
        "filesrc",
        "qtdemux",
        "h264parse",
        "h264timestamper",
        "aacparse",
        "rtph264pay",
        "rtpmp4gpay",
        "rtspsrc",
        "rtmp2src",
        "rtph264depay",
        "rtpmp4gdepay",
        "avdec_aac",
        "voaacenc",
        "flvmux",
        "rtmpsink",
    ] {
        if gst::ElementFactory::find(element).is_none() {
            missing.push(format!("GStreamer element {element}"));
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "missing: {} (scripts/install-deps.sh installs them)",
            missing.join(", ")
        ))
    }
}

/// A TCP port free on 127.0.0.1 right now (bind to 0, read, close).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// A fresh directory for one test's files (config, logs, captures), kept after the test for
/// inspection: `CARGO_TARGET_TMPDIR/live/<name>` (the system's temporary directory outside
/// tests).
pub fn test_dir(name: &str) -> PathBuf {
    let dir = option_env!("CARGO_TARGET_TMPDIR")
        .map_or_else(std::env::temp_dir, PathBuf::from)
        .join("live")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the test directory");
    dir
}

/// Polls `f` every `every` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Whether something accepts TCP connections on `addr`.
pub fn port_open(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

// ---------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------

unsafe extern "C" {
    // libc's kill(2) and prctl(2); std links libc already.
    fn kill(pid: i32, sig: i32) -> i32;
    fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
}
const SIGTERM: i32 = 15;
/// Freezes a process (it cannot catch it) until [`SIGCONT`].
pub const SIGSTOP: i32 = 19;
pub const SIGCONT: i32 = 18;
const PR_SET_PDEATHSIG: i32 = 1;

/// A child process whose stderr goes, line by line, to a log file and to memory; stopped by
/// `Drop` (SIGTERM, then SIGKILL after the grace period).
pub struct Proc {
    pub name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    log_path: PathBuf,
    stderr_thread: Option<JoinHandle<()>>,
    status: Option<ExitStatus>,
    /// Grace between SIGTERM and SIGKILL when dropped.
    pub term_grace: Duration,
}

impl Proc {
    /// Spawns `cmd` with stdin closed and stderr piped to `log_path` (and memory). Stdout is
    /// left as `cmd` set it (default: inherited; use `Stdio::piped()` and [`Proc::take_stdout`]
    /// to read it). With `LIVE_TEST_VERBOSE` set the lines are also echoed to stderr.
    ///
    /// The child gets SIGTERM should the spawning thread die without dropping this (test
    /// binary killed), so no server outlives the tests.
    pub fn spawn(name: &str, mut cmd: Command, log_path: &Path) -> std::io::Result<Proc> {
        use std::os::unix::process::CommandExt;
        cmd.stdin(Stdio::null()).stderr(Stdio::piped());
        // SAFETY: prctl(2) is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                prctl(PR_SET_PDEATHSIG, SIGTERM as u64, 0, 0, 0);
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut log = std::fs::File::create(log_path)?;
        let verbose = std::env::var_os("LIVE_TEST_VERBOSE").is_some();
        let (lines2, name2) = (lines.clone(), name.to_string());
        let stderr_thread = std::thread::Builder::new()
            .name(format!("{name}-stderr"))
            .spawn(move || {
                let started = Instant::now();
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let _ = writeln!(log, "[{:8.3}] {line}", started.elapsed().as_secs_f64());
                    if verbose {
                        eprintln!("[{name2}] {line}");
                    }
                    lines2.lock().unwrap().push(line);
                }
            })?;
        Ok(Proc {
            name: name.to_string(),
            child,
            lines,
            log_path: log_path.to_path_buf(),
            stderr_thread: Some(stderr_thread),
            status: None,
            term_grace: Duration::from_secs(5),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Stderr lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The last `n` stderr lines, one string (for assertion messages).
    pub fn tail(&self, n: usize) -> String {
        let lines = self.lines.lock().unwrap();
        let from = lines.len().saturating_sub(n);
        format!(
            "--- last {} lines of {} stderr ({}) ---\n{}",
            lines.len() - from,
            self.name,
            self.log_path.display(),
            lines[from..].join("\n")
        )
    }

    /// Waits until a stderr line contains `needle`; returns that line. `None` on timeout or
    /// when the process exited without printing it.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return Some(l.clone());
            }
            if self.try_wait().is_some() {
                // Let the reader thread drain what the process printed last.
                std::thread::sleep(Duration::from_millis(100));
                return self
                    .lines
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|l| l.contains(needle))
                    .cloned();
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The exit status if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_for(timeout, Duration::from_millis(50), || self.try_wait())
    }

    /// Sends SIGTERM.
    pub fn signal_term(&self) {
        if self.status.is_none() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                kill(self.child.id() as i32, SIGTERM);
            }
        }
    }

    /// Sends `sig` (e.g. [`SIGSTOP`], [`SIGCONT`]) if the process still runs.
    pub fn signal(&self, sig: i32) {
        if self.status.is_none() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                kill(self.child.id() as i32, sig);
            }
        }
    }

    /// SIGTERM, then SIGKILL if still running after `grace`; waits and returns the status.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.try_wait() {
            return Some(s);
        }
        self.signal_term();
        if let Some(s) = self.wait_timeout(grace) {
            return Some(s);
        }
        eprintln!(
            "{} (pid {}) ignored SIGTERM for {grace:?}: SIGKILL",
            self.name,
            self.child.id()
        );
        let _ = self.child.kill();
        self.status = self.child.wait().ok();
        self.status
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(self.term_grace);
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------
// RTSP server
// ---------------------------------------------------------------------------------------

/// When one audio buffer left the RTSP server.
#[derive(Debug, Clone, Copy)]
pub struct Departure {
    /// Position in the file (stream time), seconds.
    pub stream_s: f64,
    /// When the server's sink was due to send it (pipeline clock: base time + running time,
    /// mapped onto `Instant`).
    pub at: Instant,
}

/// Departures of the audio of one RTSP session (one client PLAY of the media).
pub type Session = Vec<Departure>;

/// An RTSP server (GStreamer's RTSP server library) serving an MP4 (H.264 + AAC) at a mount
/// point on 127.0.0.1, in real time, over RTP/RTSP/TCP (interleaved: the server opens no
/// UDP socket). H.264 as `rtph264pay` (pt 96), AAC as `rtpmp4gpay` (RFC 3640, pt 97): what
/// the worker's `rtph264depay`/`rtpmp4gdepay` expect. Every client gets its own media
/// (not shared), starting at the beginning of the file. Stopped by `Drop`.
pub struct RtspServer {
    port: u16,
    mount: String,
    main_loop: glib::MainLoop,
    thread: Option<JoinHandle<()>>,
    sessions: Arc<Mutex<Vec<Session>>>,
    /// While set, the payloaders hold their buffers: the connection stays open and nothing
    /// is sent (a frozen camera or server).
    frozen: Arc<AtomicBool>,
    /// While set, RTCP packets that carry a BYE are not sent (a server that does not end its
    /// streams with one, or loses it).
    drop_bye: Arc<AtomicBool>,
}

impl RtspServer {
    pub fn start(file: &Path, mount: &str) -> Result<RtspServer, String> {
        Self::start_on(file, mount, 0)
    }

    /// [`RtspServer::start`] on `port` (0: any free one), e.g. the port of a server that was
    /// stopped: a server that comes back.
    pub fn start_on(file: &Path, mount: &str, port: u16) -> Result<RtspServer, String> {
        gst::init().map_err(|e| e.to_string())?;
        if !file.is_file() {
            return Err(format!("{}: no such file", file.display()));
        }
        let launch = format!(
            "( filesrc location=\"{}\" ! qtdemux name=d \
               d.video_0 ! queue ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=-1 \
               d.audio_0 ! queue ! aacparse ! rtpmp4gpay name=pay1 pt=97 )",
            file.display()
        );
        let sessions: Arc<Mutex<Vec<Session>>> = Arc::default();
        let frozen: Arc<AtomicBool> = Arc::default();
        let drop_bye: Arc<AtomicBool> = Arc::default();
        let drop_bye2 = drop_bye.clone();
        let (tx, rx) = mpsc::channel::<Result<(u16, glib::MainLoop), String>>();
        let sessions2 = sessions.clone();
        let frozen2 = frozen.clone();
        let mount2 = mount.to_string();
        let thread = std::thread::Builder::new()
            .name("rtsp-server".into())
            .spawn(move || {
                let ctx = glib::MainContext::new();
                let res = ctx.with_thread_default(|| {
                    let main_loop = glib::MainLoop::new(Some(&ctx), false);
                    let server = gst_rtsp_server::RTSPServer::new();
                    server.set_address("127.0.0.1");
                    server.set_service(&port.to_string());
                    let factory = gst_rtsp_server::RTSPMediaFactory::new();
                    factory.set_launch(&launch);
                    factory.set_shared(false);
                    factory.set_protocols(gst_rtsp_server::gst_rtsp::RTSPLowerTrans::TCP);
                    factory.connect_media_configure(move |_, media| {
                        record_departures(media, &sessions2);
                        hold_while_frozen(media, &frozen2);
                        let drop_bye = drop_bye2.clone();
                        media.connect_prepared(move |media| drop_rtcp_bye(media, &drop_bye));
                    });
                    let Some(mounts) = server.mount_points() else {
                        let _ = tx.send(Err("RTSP server without mount points".into()));
                        return;
                    };
                    mounts.add_factory(&mount2, factory);
                    let source = match server.attach(Some(&ctx)) {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = tx.send(Err(format!("RTSP server attach: {e}")));
                            return;
                        }
                    };
                    let _ = tx.send(Ok((server.bound_port() as u16, main_loop.clone())));
                    main_loop.run();
                    // Close every client: their sessions' media go to NULL.
                    server
                        .client_filter(Some(&mut |_, _| gst_rtsp_server::RTSPFilterResult::Remove));
                    if let Some(s) = ctx.find_source_by_id(&source) {
                        s.destroy();
                    }
                    let until = Instant::now() + Duration::from_millis(500);
                    while Instant::now() < until {
                        if !ctx.iteration(false) {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                });
                if let Err(e) = res {
                    let _ = tx.send(Err(format!("RTSP server main context: {e}")));
                }
            })
            .map_err(|e| e.to_string())?;
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok((port, main_loop))) => Ok(RtspServer {
                port,
                mount: mount.to_string(),
                main_loop,
                thread: Some(thread),
                sessions,
                frozen,
                drop_bye,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err("RTSP server did not start in 10 s".into()),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("rtsp://127.0.0.1:{}{}", self.port, self.mount)
    }

    /// Freezes (or thaws) every session: no packet leaves while frozen, the connections stay
    /// open, and the file resumes where it stopped.
    pub fn set_frozen(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::SeqCst);
    }

    /// While set, no RTCP BYE leaves the server: at the end of the file the streams just go
    /// silent (the server's RTCP reports go on).
    pub fn set_drop_bye(&self, drop: bool) {
        self.drop_bye.store(drop, Ordering::SeqCst);
    }

    /// Number of media sessions served so far (one per client PLAY).
    pub fn session_count(&self) -> usize {
        self.sessions.lock().unwrap().len()
    }

    /// Audio departures of session `i`.
    pub fn session(&self, i: usize) -> Session {
        self.sessions
            .lock()
            .unwrap()
            .get(i)
            .cloned()
            .unwrap_or_default()
    }

    /// Position (stream time, s) of the last audio sent by the latest session, `None`
    /// before the first.
    pub fn position_s(&self) -> Option<f64> {
        let now = Instant::now();
        let sessions = self.sessions.lock().unwrap();
        sessions
            .last()?
            .iter()
            .rev()
            .find(|d| d.at <= now)
            .map(|d| d.stream_s)
    }

    /// When the audio at file position `stream_s` left the server in session `i`
    /// (interpolated from the buffer that holds it).
    pub fn departure_of(&self, i: usize, stream_s: f64) -> Option<Instant> {
        let sessions = self.sessions.lock().unwrap();
        let d = sessions
            .get(i)?
            .iter()
            .filter(|d| d.stream_s <= stream_s)
            .max_by(|a, b| a.stream_s.total_cmp(&b.stream_s))?;
        Some(d.at + Duration::from_secs_f64(stream_s - d.stream_s))
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        self.main_loop.quit();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Drops the RTCP compound packets that hold a BYE (packet type 203) on their way out of
/// the media's rtpbin while `drop` is set.
fn drop_rtcp_bye(media: &gst_rtsp_server::RTSPMedia, drop: &Arc<AtomicBool>) {
    let mut top = media.element();
    while let Some(p) = top.parent().and_then(|p| p.downcast::<gst::Element>().ok()) {
        top = p;
    }
    let Ok(bin) = top.downcast::<gst::Bin>() else {
        return;
    };
    let rtpbins = bin
        .iterate_recurse()
        .into_iter()
        .flatten()
        .filter(|e| e.factory().is_some_and(|f| f.name() == "rtpbin"));
    for rtpbin in rtpbins {
        for pad in rtpbin.src_pads() {
            if !pad.name().starts_with("send_rtcp_src") {
                continue;
            }
            let drop = drop.clone();
            pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                let has_bye = match &info.data {
                    Some(gst::PadProbeData::Buffer(b)) => {
                        b.map_readable().is_ok_and(|m| rtcp_has_bye(&m))
                    }
                    _ => false,
                };
                if has_bye && drop.load(Ordering::SeqCst) {
                    gst::PadProbeReturn::Drop
                } else {
                    gst::PadProbeReturn::Ok
                }
            });
        }
    }
}

/// Whether an RTCP compound packet holds a BYE.
fn rtcp_has_bye(data: &[u8]) -> bool {
    let mut at = 0;
    while at + 4 <= data.len() {
        if data[at + 1] == 203 {
            return true;
        }
        at += (usize::from(u16::from_be_bytes([data[at + 2], data[at + 3]])) + 1) * 4;
    }
    false
}

/// Holds every buffer of the payloaders of a new media while `frozen` is set.
fn hold_while_frozen(media: &gst_rtsp_server::RTSPMedia, frozen: &Arc<AtomicBool>) {
    let Ok(bin) = media.element().downcast::<gst::Bin>() else {
        return;
    };
    for name in ["pay0", "pay1"] {
        let Some(pad) = bin.by_name(name).and_then(|p| p.static_pad("src")) else {
            continue;
        };
        let frozen = frozen.clone();
        pad.add_probe(
            gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
            move |_, _| {
                let until = Instant::now() + Duration::from_secs(120);
                while frozen.load(Ordering::SeqCst) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(10));
                }
                gst::PadProbeReturn::Ok
            },
        );
    }
}

/// Adds a probe on the audio payloader of a new media that records when each buffer is due
/// at the server's sinks.
fn record_departures(media: &gst_rtsp_server::RTSPMedia, sessions: &Arc<Mutex<Vec<Session>>>) {
    let index = {
        let mut s = sessions.lock().unwrap();
        s.push(Vec::new());
        s.len() - 1
    };
    let Some(pay) = media
        .element()
        .downcast::<gst::Bin>()
        .ok()
        .and_then(|b| b.by_name("pay1"))
    else {
        return;
    };
    let sessions = sessions.clone();
    pay.static_pad("src").unwrap().add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
        move |pad, info| {
            let pts = match &info.data {
                Some(gst::PadProbeData::Buffer(b)) => b.pts(),
                Some(gst::PadProbeData::BufferList(l)) => l.get(0).and_then(|b| b.pts()),
                _ => None,
            };
            if let Some(d) = pts.and_then(|pts| departure(pad, pts)) {
                sessions.lock().unwrap()[index].push(d);
            }
            gst::PadProbeReturn::Ok
        },
    );
}

fn departure(pad: &gst::Pad, pts: gst::ClockTime) -> Option<Departure> {
    let ev = pad.sticky_event::<gst::event::Segment>(0)?;
    let seg = ev.segment().downcast_ref::<gst::ClockTime>()?;
    let rt = seg.to_running_time(pts)?;
    let st = seg.to_stream_time(pts)?;
    let elem = pad.parent_element()?;
    let clock = elem.clock()?;
    let base = elem.base_time()?;
    let (now_clock, now) = (clock.time(), Instant::now());
    let due = base + rt;
    let at = if due >= now_clock {
        now + Duration::from_nanos((due - now_clock).nseconds())
    } else {
        now.checked_sub(Duration::from_nanos((now_clock - due).nseconds()))?
    };
    Some(Departure {
        stream_s: st.nseconds() as f64 / 1e9,
        at,
    })
}

// ---------------------------------------------------------------------------------------
// nginx-rtmp
// ---------------------------------------------------------------------------------------

/// nginx with the RTMP module, its own config, logs and pid in `dir`, listening on
/// 127.0.0.1 only: RTMP on [`rtmp_port`](Self::rtmp_port), HTTP (`/stat`, `/control`) on
/// [`http_port`](Self::http_port). One process (`master_process off`), so kill + wait stops
/// it completely. Stopped by `Drop`.
///
/// nginx-rtmp splits `rtmp://host/live/test/out` into application `live/test` and stream
/// `out`: pass the applications (`"live/test"`) to [`NginxRtmp::start`].
pub struct NginxRtmp {
    proc: Proc,
    dir: PathBuf,
    rtmp_port: u16,
    http_port: u16,
}

impl NginxRtmp {
    pub fn start(dir: &Path, applications: &[&str]) -> Result<NginxRtmp, String> {
        Self::start_with(dir, applications, "")
    }

    /// [`NginxRtmp::start`] with more directives in each application, e.g. `play_restart
    /// on;` (subscribers are told `NetStream.Play.Stop` when the publisher leaves, and
    /// ffmpeg ends: what MediaMTX does by closing its readers).
    pub fn start_with(
        dir: &Path,
        applications: &[&str],
        directives: &str,
    ) -> Result<NginxRtmp, String> {
        let dir = dir.join("nginx");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mut last_err = String::new();
        // A port picked free can be taken before nginx binds it: try a few times.
        for attempt in 0..3 {
            let (rtmp_port, http_port) = (free_port(), free_port());
            let conf = nginx_config(&dir, rtmp_port, http_port, applications, directives);
            let conf_path = dir.join("nginx.conf");
            std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
            let mut cmd = Command::new("nginx");
            cmd.arg("-c")
                .arg(&conf_path)
                .arg("-p")
                .arg(&dir)
                .arg("-e")
                .arg(dir.join("error.log"))
                .stdout(Stdio::null());
            let mut proc = Proc::spawn(
                "nginx",
                cmd,
                &dir.join(format!("nginx-stderr-{attempt}.log")),
            )
            .map_err(|e| format!("cannot run nginx: {e}"))?;
            proc.term_grace = Duration::from_secs(3);
            let up = wait_for(Duration::from_secs(5), Duration::from_millis(50), || {
                if proc.try_wait().is_some() {
                    return Some(false);
                }
                (port_open(SocketAddr::from(([127, 0, 0, 1], rtmp_port)))
                    && port_open(SocketAddr::from(([127, 0, 0, 1], http_port))))
                .then_some(true)
            });
            if up == Some(true) {
                return Ok(NginxRtmp {
                    proc,
                    dir,
                    rtmp_port,
                    http_port,
                });
            }
            drop(proc);
            let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
            last_err = format!(
                "nginx did not come up (attempt {}): {}",
                attempt + 1,
                log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
            );
        }
        Err(last_err)
    }

    pub fn rtmp_port(&self) -> u16 {
        self.rtmp_port
    }

    /// Kills nginx (SIGKILL: a crash, every connection reset), waits `down`, and starts it
    /// again on the same ports and configuration.
    pub fn kill_and_restart(&mut self, down: Duration) -> Result<(), String> {
        self.proc.signal(9);
        let _ = self.proc.wait_timeout(Duration::from_secs(5));
        std::thread::sleep(down);
        let conf_path = self.dir.join("nginx.conf");
        let mut cmd = Command::new("nginx");
        cmd.arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(&self.dir)
            .arg("-e")
            .arg(self.dir.join("error.log"))
            .stdout(Stdio::null());
        let mut proc = Proc::spawn("nginx", cmd, &self.dir.join("nginx-stderr-restart.log"))
            .map_err(|e| format!("cannot run nginx: {e}"))?;
        proc.term_grace = Duration::from_secs(3);
        let (rtmp, http) = (self.rtmp_port, self.http_port);
        wait_for(Duration::from_secs(5), Duration::from_millis(50), || {
            (port_open(SocketAddr::from(([127, 0, 0, 1], rtmp)))
                && port_open(SocketAddr::from(([127, 0, 0, 1], http))))
            .then_some(())
        })
        .ok_or("nginx did not come back on its ports")?;
        self.proc = proc;
        Ok(())
    }

    /// Process id of nginx (to freeze it with SIGSTOP).
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// `rtmp://127.0.0.1:PORT/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("rtmp://127.0.0.1:{}/{path}", self.rtmp_port)
    }

    pub fn error_log(&self) -> PathBuf {
        self.dir.join("error.log")
    }

    /// The `rtmp_stat` XML.
    pub fn stat(&self) -> Result<String, String> {
        let (status, body) = http_get(
            SocketAddr::from(([127, 0, 0, 1], self.http_port)),
            "/stat",
            Duration::from_secs(2),
        )?;
        if status != 200 {
            return Err(format!("GET /stat: HTTP {status}"));
        }
        Ok(body)
    }

    /// What nginx says of stream `name` of application `app`; `None` if it does not exist.
    pub fn stream(&self, app: &str, name: &str) -> Option<StreamStat> {
        parse_stream_stat(&self.stat().ok()?, app, name)
    }

    /// Disconnects the subscribers of a stream (they see the end of the stream). Returns
    /// how many were dropped.
    pub fn drop_subscribers(&self, app: &str, name: &str) -> Result<u32, String> {
        let (status, body) = http_get(
            SocketAddr::from(([127, 0, 0, 1], self.http_port)),
            &format!("/control/drop/subscriber?app={app}&name={name}"),
            Duration::from_secs(2),
        )?;
        if status != 200 {
            return Err(format!("drop subscriber: HTTP {status}: {body}"));
        }
        Ok(body.trim().parse().unwrap_or(0))
    }
}

fn nginx_config(
    dir: &Path,
    rtmp_port: u16,
    http_port: u16,
    applications: &[&str],
    directives: &str,
) -> String {
    let d = dir.display();
    let apps: String = applications
        .iter()
        .map(|a| format!("        application {a} {{ live on; {directives} }}\n"))
        .collect();
    format!(
        "# Generated by the live tests.
load_module {NGINX_RTMP_MODULE};
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 128; }}
rtmp {{
    server {{
        listen 127.0.0.1:{rtmp_port};
        # Pings keep an idle subscriber (waiting for the publisher) from hitting its read
        # timeout; subscribers are ended with /control/drop/subscriber.
        ping 1s;
        ping_timeout 10s;
{apps}    }}
}}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{http_port};
        location /stat {{ rtmp_stat all; }}
        location /control {{ rtmp_control all; }}
    }}
}}
"
    )
}

/// One stream in nginx-rtmp's statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamStat {
    /// A publisher is connected.
    pub publishing: bool,
    /// Clients of the stream (publisher included).
    pub nclients: u32,
    pub bytes_in: u64,
}

/// Finds `<stream><name>NAME</name>…</stream>` inside `<application><name>APP</name>…`.
pub fn parse_stream_stat(xml: &str, app: &str, name: &str) -> Option<StreamStat> {
    let tag = |s: &str, t: &str| -> Option<String> {
        let open = format!("<{t}>");
        let i = s.find(&open)? + open.len();
        let j = s[i..].find(&format!("</{t}>"))? + i;
        Some(s[i..j].to_string())
    };
    let app_section = xml
        .split("<application>")
        .skip(1)
        .find(|s| tag(s, "name").as_deref() == Some(app))?;
    let app_section = app_section.split("</application>").next()?;
    let stream = app_section
        .split("<stream>")
        .skip(1)
        .map(|s| s.split("</stream>").next().unwrap_or(s))
        .find(|s| tag(s, "name").as_deref() == Some(name))?;
    Some(StreamStat {
        publishing: stream.contains("<publishing/>"),
        nclients: tag(stream, "nclients")?.trim().parse().ok()?,
        bytes_in: tag(stream, "bytes_in")
            .and_then(|b| b.trim().parse().ok())
            .unwrap_or(0),
    })
}

// ---------------------------------------------------------------------------------------
// HTTP and metrics
// ---------------------------------------------------------------------------------------

/// `GET path` over HTTP/1.0 on a plain `TcpStream`: (status, body).
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(timeout)).ok();
    s.set_write_timeout(Some(timeout)).ok();
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("{addr}: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("{addr}{path}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr}{path}: malformed HTTP response"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{addr}{path}: bad status line"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A parsed `/metrics` scrape, and when it was taken.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub at: Instant,
    pub scrape: prometheus_parse::Scrape,
}

/// `GET /metrics` on 127.0.0.1:`port`, parsed with `prometheus-parse`.
pub fn scrape(port: u16) -> Result<Metrics, String> {
    let (status, body) = http_get(
        SocketAddr::from(([127, 0, 0, 1], port)),
        "/metrics",
        Duration::from_secs(2),
    )?;
    if status != 200 {
        return Err(format!("GET /metrics: HTTP {status}"));
    }
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .map_err(|e| format!("cannot parse /metrics: {e}"))?;
    if scrape.samples.is_empty() {
        return Err(format!("/metrics has no samples: {body:?}"));
    }
    Ok(Metrics {
        at: Instant::now(),
        scrape,
    })
}

impl Metrics {
    /// Sum of the samples of `name` whose labels include all of `labels` (counters, gauges
    /// and untyped samples); `None` if there is none.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for s in &self.scrape.samples {
            if s.metric != name || !labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)) {
                continue;
            }
            let v = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => continue,
            };
            *found.get_or_insert(0.0) += v;
        }
        found
    }

    /// Value of a single-sample metric.
    pub fn value(&self, name: &str) -> Option<f64> {
        self.sum(name, &[])
    }

    /// Whether a histogram `name` is present.
    pub fn has_histogram(&self, name: &str) -> bool {
        self.scrape
            .samples
            .iter()
            .any(|s| s.metric == name && matches!(s.value, prometheus_parse::Value::Histogram(_)))
    }
}

// ---------------------------------------------------------------------------------------
// RTMP capture (ffmpeg subscriber)
// ---------------------------------------------------------------------------------------

/// PCM (mono, 48 kHz) decoded from the subscribed stream, and when each piece arrived.
#[derive(Default)]
struct Pcm {
    samples: Vec<f32>,
    /// (number of samples received so far, when).
    arrivals: Vec<(usize, Instant)>,
}

/// An `ffmpeg` subscriber of an RTMP stream: copies video and audio (`-c copy`) into a file
/// and decodes the audio to mono 48 kHz PCM on its stdout, read here with the arrival time
/// of each piece. Start it before the publisher: nginx keeps an idle subscriber waiting (its
/// pings keep ffmpeg's `-rw_timeout` from firing) and gives it the stream from its first
/// byte. End it with [`RtmpCapture::finish`] (nginx drops it, ffmpeg finalizes the file);
/// `-rw_timeout` ends it anyway should nginx die. Killed by `Drop`.
pub struct RtmpCapture {
    proc: Proc,
    out: PathBuf,
    pcm: Arc<Mutex<Pcm>>,
    stdout_thread: Option<JoinHandle<()>>,
}

pub const CAPTURE_RATE: u32 = 48_000;

impl RtmpCapture {
    pub fn start(url: &str, out: &Path, log: &Path) -> Result<RtmpCapture, String> {
        Self::start_with(url, &[], out, log)
    }

    /// Subscribes to application `app`, stream `name`: ffmpeg takes the first two path
    /// segments of a URL as the application, librtmp (GStreamer's `rtmpsink`) all but the
    /// last, so deeper paths need them spelled out.
    pub fn start_app(
        nginx: &NginxRtmp,
        app: &str,
        name: &str,
        out: &Path,
        log: &Path,
    ) -> Result<RtmpCapture, String> {
        let url = nginx.url(&format!("{app}/{name}"));
        Self::start_with(&url, &["-rtmp_app", app, "-rtmp_playpath", name], out, log)
    }

    fn start_with(
        url: &str,
        input_options: &[&str],
        out: &Path,
        log: &Path,
    ) -> Result<RtmpCapture, String> {
        let mut cmd = Command::new("ffmpeg");
        cmd.args(["-nostdin", "-hide_banner", "-loglevel", "warning"])
            .args(["-rw_timeout", "15000000"])
            .args(input_options)
            .args(["-i", url])
            .args(["-map", "0:v?", "-map", "0:a?", "-c", "copy", "-y"])
            .arg(out)
            .args(["-map", "0:a:0", "-ac", "1", "-ar", "48000"])
            .args(["-f", "s16le", "-flush_packets", "1", "pipe:1"])
            .stdout(Stdio::piped());
        let mut proc =
            Proc::spawn("ffmpeg", cmd, log).map_err(|e| format!("cannot run ffmpeg: {e}"))?;
        proc.term_grace = Duration::from_secs(3);
        let mut stdout = proc.take_stdout().expect("piped stdout");
        let pcm: Arc<Mutex<Pcm>> = Arc::default();
        let pcm2 = pcm.clone();
        let stdout_thread = std::thread::Builder::new()
            .name("ffmpeg-pcm".into())
            .spawn(move || {
                let mut buf = vec![0u8; 8192];
                let mut carry: Option<u8> = None;
                loop {
                    let n = match stdout.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let at = Instant::now();
                    let mut bytes: Vec<u8> = carry.take().into_iter().collect();
                    bytes.extend_from_slice(&buf[..n]);
                    if bytes.len() % 2 == 1 {
                        carry = bytes.pop();
                    }
                    let mut p = pcm2.lock().unwrap();
                    p.samples.extend(
                        bytes
                            .chunks_exact(2)
                            .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0),
                    );
                    let len = p.samples.len();
                    p.arrivals.push((len, at));
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(RtmpCapture {
            proc,
            out: out.to_path_buf(),
            pcm,
            stdout_thread: Some(stdout_thread),
        })
    }

    pub fn path(&self) -> &Path {
        &self.out
    }

    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }

    /// When the first audio arrived.
    pub fn first_audio_at(&self) -> Option<Instant> {
        self.pcm.lock().unwrap().arrivals.first().map(|a| a.1)
    }

    /// Seconds of audio received so far.
    pub fn audio_received_s(&self) -> f64 {
        self.pcm.lock().unwrap().samples.len() as f64 / f64::from(CAPTURE_RATE)
    }

    /// Ends the capture: has nginx drop the subscriber (`app`/`name`), waits for ffmpeg to
    /// finalize the file and exit. Returns ffmpeg's exit status.
    pub fn finish(
        &mut self,
        nginx: &NginxRtmp,
        app: &str,
        name: &str,
        timeout: Duration,
    ) -> Option<ExitStatus> {
        if self.proc.try_wait().is_none()
            && let Err(e) = nginx.drop_subscribers(app, name)
        {
            eprintln!("cannot drop the subscriber: {e}");
        }
        let status = self
            .proc
            .wait_timeout(timeout)
            .or_else(|| self.proc.stop(Duration::from_secs(3)));
        if let Some(t) = self.stdout_thread.take() {
            let _ = t.join();
        }
        status
    }

    /// Beeps heard in the received audio: (onset in seconds of received audio, when that
    /// sample arrived).
    pub fn beep_arrivals(&self) -> Vec<(f64, Instant)> {
        let pcm = self.pcm.lock().unwrap();
        dubbing_syncmeter::detect_beeps(
            &pcm.samples,
            CAPTURE_RATE,
            0.0,
            &dubbing_syncmeter::BeepParams::default(),
        )
        .iter()
        .filter_map(|b| {
            let idx = (b.onset_s * f64::from(CAPTURE_RATE)) as usize;
            pcm.arrivals
                .iter()
                .find(|(n, _)| *n > idx)
                .map(|(_, at)| (b.onset_s, *at))
        })
        .collect()
    }
}

// ---------------------------------------------------------------------------------------
// ffprobe
// ---------------------------------------------------------------------------------------

/// One stream of a media file as ffprobe counts it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbedStream {
    pub codec_type: String,
    pub codec_name: String,
    pub packets: u64,
}

/// Streams of `path` with their packet counts (`ffprobe -count_packets`).
pub fn probe_streams(path: &Path) -> Result<Vec<ProbedStream>, String> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_packets", "-show_entries"])
        .arg("stream=codec_type,codec_name,nb_read_packets")
        .args(["-of", "csv=p=0:nk=0"])
        .arg(path)
        .output()
        .map_err(|e| format!("cannot run ffprobe: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ffprobe {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut s = ProbedStream {
                codec_type: String::new(),
                codec_name: String::new(),
                packets: 0,
            };
            for kv in l.split(',') {
                match kv.split_once('=') {
                    Some(("codec_type", v)) => s.codec_type = v.to_string(),
                    Some(("codec_name", v)) => s.codec_name = v.to_string(),
                    Some(("nb_read_packets", v)) => s.packets = v.trim().parse().unwrap_or(0),
                    _ => {}
                }
            }
            s
        })
        .collect())
}

/// Timestamps (seconds) of the packets of stream `select` (ffprobe's stream specifier, e.g.
/// `a:0`, `v:0`) in file order.
pub fn packet_times(path: &Path, select: &str) -> Result<Vec<f64>, String> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", select])
        .args(["-show_entries", "packet=pts_time", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .map_err(|e| format!("cannot run ffprobe: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ffprobe {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(',').parse().ok())
        .collect())
}

/// Consecutive packets of `times` whose spacing is outside `[lo, hi]` seconds:
/// (index of the second packet, its time, the spacing).
pub fn irregular_spacing(times: &[f64], lo: f64, hi: f64) -> Vec<(usize, f64, f64)> {
    times
        .windows(2)
        .enumerate()
        .filter_map(|(i, w)| {
            let d = w[1] - w[0];
            (!(lo..=hi).contains(&d)).then_some((i + 1, w[1], d))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The stream worker
// ---------------------------------------------------------------------------------------

/// The stream worker as a child process.
pub struct Worker {
    pub proc: Proc,
    pub metrics_port: u16,
    pub started: Instant,
}

impl Worker {
    /// Runs `bin` with `args` and `env` (the caller's `WORKER_*`/`MEDIAMTX_*` variables are
    /// removed first) and waits for its `metrics listening on 127.0.0.1:PORT` line.
    pub fn start(
        bin: &Path,
        args: &[&str],
        env: &[(&str, String)],
        log: &Path,
    ) -> Result<Worker, String> {
        let mut cmd = Command::new(bin);
        cmd.args(args).stdout(Stdio::null());
        for (k, _) in std::env::vars() {
            if k.starts_with("WORKER_") || k.starts_with("MEDIAMTX_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("NO_COLOR", "1");
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let started = Instant::now();
        let mut proc = Proc::spawn("dubbing-worker", cmd, log)
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        let needle = "metrics listening on ";
        let line = proc
            .wait_for_line(needle, Duration::from_secs(20))
            .ok_or_else(|| {
                format!(
                    "the worker printed no '{needle}127.0.0.1:PORT' line (exit {:?})\n{}",
                    proc.try_wait(),
                    proc.tail(30)
                )
            })?;
        let port = line
            .split(needle)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|addr| addr.rsplit(':').next())
            .and_then(|p| {
                p.trim_end_matches(|c: char| !c.is_ascii_digit())
                    .parse()
                    .ok()
            })
            .ok_or_else(|| format!("cannot read the metrics port in {line:?}"))?;
        Ok(Worker {
            proc,
            metrics_port: port,
            started,
        })
    }
}

/// (PTS, DTS) of one packet, seconds; `None` where ffprobe reads no value.
pub type PacketTimes = (Option<f64>, Option<f64>);

/// (PTS, DTS) of the packets of stream `select` (e.g. `v:0`), in file (decode) order.
pub fn packet_timestamps(path: &Path, select: &str) -> Result<Vec<PacketTimes>, String> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", select])
        .args([
            "-show_entries",
            "packet=pts_time,dts_time",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .map_err(|e| format!("cannot run ffprobe: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ffprobe {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut f = l.split(',').map(|v| v.trim().parse::<f64>().ok());
            (f.next().flatten(), f.next().flatten())
        })
        .collect())
}

// ---------------------------------------------------------------------------------------
// RTMP publisher (ffmpeg)
// ---------------------------------------------------------------------------------------

/// An `ffmpeg` publisher: sends a file in real time (`-re`) to an RTMP URL as FLV, streams
/// copied; it exits at the end of the file. Killed by `Drop`.
pub struct RtmpPublisher {
    proc: Proc,
}

impl RtmpPublisher {
    pub fn start(file: &Path, url: &str, log: &Path) -> Result<RtmpPublisher, String> {
        let mut cmd = Command::new("ffmpeg");
        cmd.args([
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "warning",
            "-re",
            "-i",
        ])
        .arg(file)
        .args([
            "-map", "0:v:0", "-map", "0:a:0", "-c", "copy", "-f", "flv", url,
        ])
        .stdout(Stdio::null());
        let mut proc = Proc::spawn("ffmpeg-publisher", cmd, log)
            .map_err(|e| format!("cannot run ffmpeg: {e}"))?;
        proc.term_grace = Duration::from_secs(3);
        Ok(RtmpPublisher { proc })
    }

    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }
}

// ---------------------------------------------------------------------------------------
// Captions and SRT
// ---------------------------------------------------------------------------------------

/// A caption as a reader shows it: from `start_s` to `end_s` (seconds from the file's first
/// video frame, as ffmpeg counts), its text on one line.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedCue {
    pub start_s: f64,
    pub end_s: f64,
    pub text: String,
}

/// The CEA-608 captions of `path`'s video, decoded by ffmpeg (`movie=…[out0+subcc]`, the
/// caption decoder on field `field`: `first` (CC1) or `second` (CC3)).
pub fn decode_captions(path: &Path, field: &str) -> Result<Vec<DecodedCue>, String> {
    let out = Command::new("ffmpeg")
        .args([
            "-nostdin",
            "-v",
            "error",
            "-data_field",
            field,
            "-f",
            "lavfi",
            "-i",
        ])
        .arg(format!("movie={}[out0+subcc]", path.display()))
        .args(["-map", "0:s", "-f", "srt", "-"])
        .output()
        .map_err(|e| format!("cannot run ffmpeg: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ffmpeg decoding the captions of {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(parse_srt(&String::from_utf8_lossy(&out.stdout)))
}

/// SubRip cues, their styling (ffmpeg's `<font>`, `{\an7}`, `\h`) removed.
pub fn parse_srt(srt: &str) -> Vec<DecodedCue> {
    let secs = |t: &str| -> Option<f64> {
        let (hms, ms) = t.trim().split_once(',')?;
        let mut s = 0.0;
        for x in hms.split(':') {
            s = s * 60.0 + x.parse::<f64>().ok()?;
        }
        Some(s + ms.parse::<f64>().ok()? / 1000.0)
    };
    let mut cues = Vec::new();
    for block in srt.split("\n\n") {
        let mut lines = block.lines().filter(|l| !l.trim().is_empty());
        let _index = lines.next();
        let Some((a, b)) = lines.next().and_then(|l| l.split_once(" --> ")) else {
            continue;
        };
        let text = lines
            .map(|l| {
                l.replace("<font face=\"Monospace\">", "")
                    .replace("</font>", "")
                    .replace("{\\an7}", "")
                    .replace("\\h", " ")
            })
            .collect::<Vec<_>>()
            .join(" ");
        if let (Some(start_s), Some(end_s)) = (secs(a), secs(b)) {
            cues.push(DecodedCue {
                start_s,
                end_s,
                text: text.split_whitespace().collect::<Vec<_>>().join(" "),
            });
        }
    }
    cues
}

/// The cues the worker handed its caption inserter for `language`, from its `caption cue`
/// debug lines: (start, duration) in seconds of the published timeline, and the text.
pub fn worker_caption_cues(log: &[String], language: &str) -> Vec<(f64, f64, String)> {
    let field = |line: &str, name: &str| -> Option<String> {
        let at = line.find(&format!(" {name}="))? + name.len() + 2;
        Some(
            line[at..]
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string(),
        )
    };
    log.iter()
        .filter(|l| l.contains("caption cue"))
        .filter(|l| field(l, "language").as_deref() == Some(language))
        .filter_map(|l| {
            let start: f64 = field(l, "start_ms")?.parse().ok()?;
            let duration: f64 = field(l, "duration_ms")?.parse().ok()?;
            let text = l.split_once(" text=")?.1.trim().to_string();
            Some((start / 1000.0, duration / 1000.0, text))
        })
        .collect()
}

/// An ffmpeg SRT listener on 127.0.0.1 writing what it receives (every stream: `-map 0`) to
/// an MPEG-TS file; it ends when the publisher closes its connection.
pub struct SrtListener {
    pub proc: Proc,
    pub port: u16,
    pub out: PathBuf,
}

impl SrtListener {
    /// Listens on `port` (a free UDP port, e.g. [`free_udp_port`]); returns once the socket
    /// is bound.
    pub fn start(port: u16, out: &Path, log: &Path) -> Result<SrtListener, String> {
        let mut cmd = Command::new("ffmpeg");
        cmd.args([
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "warning",
            "-y",
            "-i",
        ])
        .arg(format!("srt://127.0.0.1:{port}?mode=listener"))
        .args(["-map", "0", "-c", "copy", "-f", "mpegts"])
        .arg(out)
        .stdout(Stdio::null());
        let proc =
            Proc::spawn("ffmpeg-srt", cmd, log).map_err(|e| format!("cannot run ffmpeg: {e}"))?;
        let needle = format!("0100007F:{port:04X}");
        wait_for(Duration::from_secs(20), Duration::from_millis(20), || {
            std::fs::read_to_string("/proc/net/udp")
                .unwrap_or_default()
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some(&needle))
                .then_some(())
        })
        .ok_or_else(|| format!("ffmpeg did not bind UDP {port}"))?;
        Ok(SrtListener {
            proc,
            port,
            out: out.to_path_buf(),
        })
    }
}

/// A free UDP port on 127.0.0.1 (bound and released).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port")
}
