//! Pipeline benchmarks of the dubbing elements (P1 overhead, P3 bridge throughput, P4
//! concurrency, P5 memory): prints a markdown report (`docs/benchmarks.md` is made from it by
//! `scripts/bench.sh`).
//!
//! ```text
//! scripts/bench.sh                       # the documented command (builds, runs, writes docs)
//! cargo build --release -p dubbing-worker --example pipeline-bench
//! target/release/examples/pipeline-bench [--runs 3] [--quick] [--only p1,p3,p4,p5]
//!     [--p4-seconds 20] [--p4-streams 10,25,50,100,150,200,300] [--p5-fragments 3600]
//!     [--input fixtures/speech-60s.mp4] [--criterion target/criterion]
//! ```
//!
//! Every measured run is a child process (this program with `child …`), so each figure is the
//! CPU time (getrusage: user + system, all threads) of one run alone, with nothing left over
//! from the runs before it. The reference STS server runs in this parent process, so its CPU
//! time is measured apart from the pipeline's (P1 also runs it inside the child, as
//! `dub-file` does, and reports both). Each figure is the median over `--runs` runs.
//!
//! * P1: `fixtures/speech-60s.mp4` through the full file chain
//!   (`dubbing_worker::pipeline::Chain::file_pipeline`: demux → decode → dubchunker → stsbridge
//!   → avoffset → AAC encode → mux → filesink) at full speed (no clock), against the same
//!   description with `identity` in place of dubchunker ! stsbridge ! avoffset.
//! * P3: `appsrc ! stsbridge ! fakesink`, non-live, 1 s 48 kHz stereo fragments against the
//!   echo server, max-in-flight 1, 4, 16: fragments per CPU second of the pipeline process.
//! * P4: N live pipelines in one process (`audiotestsrc is-live=true wave=pink-noise !
//!   dubchunker ! stsbridge ! fakesink sync=true`), each with its own stsbridge, against one
//!   server answering after 200–400 ms; N rises until a fragment falls back, arrives late or
//!   reaches the sink late (fakesink `max-lateness` 20 ms).
//! * P5: peak RSS per stream (from P4), and RSS over one hour of audio (3600 × 1 s fragments)
//!   through `appsrc ! stsbridge max-in-flight=32 ! fakesink` against a server answering after
//!   50–150 ms (out of order), sampled every 100 fragments.

use std::collections::BTreeMap;
use std::ffi::c_long;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dubbing_sts_server::{Faults, Mode, ServerConfig, StsServer};
use gst::prelude::*;

type Error = Box<dyn std::error::Error>;
/// What a child run reports: `key=value` pairs of numbers.
type Res = BTreeMap<String, f64>;

const CAPS: &str = "audio/x-raw,format=S16LE,layout=interleaved,rate=48000,channels=2";
const RATE: u64 = 48_000;
const CHANNELS: u64 = 2;

// ---------------------------------------------------------------------------------------------
// Measuring this process

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct Timeval {
    sec: c_long,
    usec: c_long,
}

#[repr(C)]
#[derive(Default)]
struct Rusage {
    utime: Timeval,
    stime: Timeval,
    /// ru_maxrss … ru_nivcsw (unused).
    _rest: [c_long; 14],
}

unsafe extern "C" {
    fn getrusage(who: i32, usage: *mut Rusage) -> i32;
}

/// CPU seconds (user, system) used so far by every thread of this process, dead ones included.
#[derive(Debug, Clone, Copy)]
struct Cpu {
    user: f64,
    sys: f64,
}

impl Cpu {
    fn now() -> Cpu {
        let mut r = Rusage::default();
        // SAFETY: RUSAGE_SELF (0) fills the whole struct, whose layout is Linux's struct rusage.
        let ok = unsafe { getrusage(0, &mut r) } == 0;
        assert!(ok, "getrusage failed");
        let s = |t: Timeval| t.sec as f64 + t.usec as f64 / 1e6;
        Cpu {
            user: s(r.utime),
            sys: s(r.stime),
        }
    }

    fn since(self, before: Cpu) -> Cpu {
        Cpu {
            user: self.user - before.user,
            sys: self.sys - before.sys,
        }
    }

    fn total(self) -> f64 {
        self.user + self.sys
    }
}

/// A `kB` field of /proc/self/status (VmRSS, VmHWM, Threads…).
fn proc_status(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Small helpers

fn arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn arg_num<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T, Error> {
    match arg(args, name) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| format!("{name}: bad value {v:?}").into()),
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn range(v: &[f64]) -> (f64, f64) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

fn get(r: &Res, k: &str) -> f64 {
    r.get(k).copied().unwrap_or(f64::NAN)
}

fn print_result(pairs: &[(&str, f64)]) {
    let line: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("RESULT {}", line.join(" "));
}

fn stat_u64(s: &gst::StructureRef, field: &str) -> u64 {
    s.get::<u64>(field).unwrap_or(0)
}

/// One fragment of speech-like noise (the element never looks at the content).
fn fragment_buffer(frames: u64) -> gst::Buffer {
    let samples = (frames * CHANNELS) as usize;
    let data: Vec<u8> = (0..samples)
        .flat_map(|i| (((i * 7919) % 20011) as i16 - 10000).to_le_bytes())
        .collect();
    gst::Buffer::from_slice(data)
}

/// Waits for EOS; an error message or `limit` without EOS is an error.
fn wait_eos(pipeline: &gst::Pipeline, limit: Duration) -> Result<(), Error> {
    let bus = pipeline.bus().expect("pipeline bus");
    let end = Instant::now() + limit;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no EOS within {} s", limit.as_secs()).into());
        }
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_nseconds(left.as_nanos() as u64)) else {
            continue;
        };
        match msg.view() {
            gst::MessageView::Eos(_) => return Ok(()),
            gst::MessageView::Error(e) => {
                return Err(format!(
                    "{} from {:?} ({:?})",
                    e.error(),
                    e.src().map(|s| s.path_string()),
                    e.debug()
                )
                .into());
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Child runs: one measurement each, printed as a RESULT line

fn child(kind: &str, args: &[String]) -> Result<(), Error> {
    gst::init()?;
    gstdubbing::plugin_register_static()?;
    match kind {
        "p1" => child_p1(args),
        "appsrc" => child_appsrc(args),
        "p4" => child_p4(args),
        _ => Err(format!("unknown child kind {kind}").into()),
    }
}

fn child_p1(args: &[String]) -> Result<(), Error> {
    let input = arg(args, "--input").ok_or("--input")?;
    let variant = arg(args, "--variant").ok_or("--variant")?;
    let server = match arg(args, "--url") {
        Some(_) => None,
        None => Some(StsServer::start(ServerConfig::default())?),
    };
    let url = match (arg(args, "--url"), &server) {
        (Some(u), _) => u.to_owned(),
        (None, Some(s)) => s.url(),
        (None, None) => unreachable!(),
    };
    let output = std::env::temp_dir().join(format!("pipeline-bench-{}.mp4", std::process::id()));
    let chain = dubbing_worker::pipeline::Chain {
        url,
        stream_id: "bench".into(),
        ..Default::default()
    };
    let dubbing = match variant {
        "full" => true,
        "identity" => false,
        v => return Err(format!("unknown variant {v}").into()),
    };
    let file = chain.file_pipeline(input, &output.to_string_lossy(), None, dubbing)?;
    if std::env::var_os("PIPELINE_BENCH_DEBUG").is_some() {
        eprintln!("pipeline-bench: {variant}: {}", file.to_launch_line());
    }
    let pipeline = file.pipeline.clone();

    let cpu0 = Cpu::now();
    let t0 = Instant::now();
    pipeline.set_state(gst::State::Playing)?;
    let res = wait_eos(&pipeline, Duration::from_secs(600));
    let wall = t0.elapsed().as_secs_f64();
    let cpu = Cpu::now().since(cpu0);
    let (dubbed, fallbacks) = match file.branches[0].dubbing.as_ref().map(|d| &d.bridge) {
        Some(e) => {
            let s = e.property::<gst::Structure>("stats");
            (stat_u64(&s, "dubbed"), stat_u64(&s, "fallbacks"))
        }
        None => (0, 0),
    };
    pipeline.set_state(gst::State::Null)?;
    let size = std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::remove_file(&output);
    res?;
    print_result(&[
        ("cpu", cpu.total()),
        ("user", cpu.user),
        ("sys", cpu.sys),
        ("wall", wall),
        ("dubbed", dubbed as f64),
        ("fallbacks", fallbacks as f64),
        ("output_bytes", size as f64),
    ]);
    Ok(())
}

/// `appsrc ! stsbridge ! fakesink`, non-live, as fast as the answers come (P3 and P5).
fn child_appsrc(args: &[String]) -> Result<(), Error> {
    let url = arg(args, "--url").ok_or("--url")?.to_owned();
    let fragments: u64 = arg_num(args, "--fragments", 1000)?;
    let max_in_flight: u32 = arg_num(args, "--max-in-flight", 4)?;
    let rss_every: u64 = arg_num(args, "--rss-every", 0)?;
    let wire_rate: u32 = arg_num(args, "--wire-rate", 0)?;
    let wire_channels: u32 = arg_num(args, "--wire-channels", 0)?;
    let loudness_match = !args.iter().any(|a| a == "--no-loudness-match");
    let protocol = arg(args, "--protocol").unwrap_or("http").to_owned();
    let frames = RATE; // 1 s fragments

    let caps: gst::Caps = CAPS.parse()?;
    let pipeline = gst::Pipeline::new();
    let src = gst_app::AppSrc::builder()
        .caps(&caps)
        .format(gst::Format::Time)
        .max_buffers(4)
        .block(true)
        .build();
    let bridge = gst::ElementFactory::make("stsbridge")
        .property_from_str("protocol", &protocol)
        .property("url", &url)
        .property("max-in-flight", max_in_flight)
        .property("stream-id", "bench")
        .property("wire-rate", wire_rate)
        .property("wire-channels", wire_channels)
        .property("loudness-match", loudness_match)
        .build()?;
    let sink = gst::ElementFactory::make("fakesink")
        .property("sync", false)
        .build()?;
    pipeline.add_many([src.upcast_ref(), &bridge, &sink])?;
    gst::Element::link_many([src.upcast_ref(), &bridge, &sink])?;

    // RSS every `rss_every` fragments out of stsbridge.
    let samples: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    if rss_every > 0 {
        let samples = samples.clone();
        let count = AtomicU64::new(0);
        sink.static_pad("sink")
            .expect("fakesink has a sink pad")
            .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                let n = count.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_multiple_of(rss_every) {
                    samples
                        .lock()
                        .expect("samples lock")
                        .push((n, proc_status("VmRSS")));
                }
                gst::PadProbeReturn::Ok
            });
    }
    pipeline.set_state(gst::State::Playing)?;
    let rss0 = proc_status("VmRSS");

    let proto = fragment_buffer(frames);
    let cpu0 = Cpu::now();
    let t0 = Instant::now();
    let feeder = {
        let src = src.clone();
        std::thread::spawn(move || {
            for i in 0..fragments {
                // A shallow copy: the memory is shared, only the metadata is new.
                let mut b = proto.copy();
                {
                    let b = b.get_mut().expect("copy is writable");
                    let start = i * frames;
                    let pts = start * 1_000_000_000 / RATE;
                    let end = (start + frames) * 1_000_000_000 / RATE;
                    b.set_pts(gst::ClockTime::from_nseconds(pts));
                    b.set_duration(gst::ClockTime::from_nseconds(end - pts));
                }
                if src.push_buffer(b).is_err() {
                    break;
                }
            }
            let _ = src.end_of_stream();
        })
    };
    // Element messages (one per fragment) are popped here too, as an application would.
    let res = wait_eos(&pipeline, Duration::from_secs(900));
    let wall = t0.elapsed().as_secs_f64();
    let cpu = Cpu::now().since(cpu0);
    let _ = feeder.join();
    let stats = bridge.property::<gst::Structure>("stats");
    pipeline.set_state(gst::State::Null)?;
    res?;
    let mut out: Vec<(String, f64)> = vec![
        ("fragments".into(), fragments as f64),
        ("dubbed".into(), stat_u64(&stats, "dubbed") as f64),
        ("fallbacks".into(), stat_u64(&stats, "fallbacks") as f64),
        ("cpu".into(), cpu.total()),
        ("user".into(), cpu.user),
        ("sys".into(), cpu.sys),
        ("wall".into(), wall),
        (
            "rtt_avg_ms".into(),
            stat_u64(&stats, "rtt-avg") as f64 / 1e6,
        ),
        (
            "max_in_flight".into(),
            stat_u64(&stats, "max-in-flight") as f64,
        ),
        ("rss_start_kb".into(), rss0 as f64),
        ("hwm_kb".into(), proc_status("VmHWM") as f64),
    ];
    for (n, kb) in samples.lock().expect("samples lock").iter() {
        out.push((format!("rss_at_{n}"), *kb as f64));
    }
    let pairs: Vec<(&str, f64)> = out.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    print_result(&pairs);
    Ok(())
}

/// N live pipelines at real time in this process (P4), or N sources alone (`--sources-only`).
fn child_p4(args: &[String]) -> Result<(), Error> {
    let url = arg(args, "--url").unwrap_or_default().to_owned();
    let streams: usize = arg_num(args, "--streams", 10)?;
    let seconds: u64 = arg_num(args, "--seconds", 20)?;
    let sources_only = args.iter().any(|a| a == "--sources-only");
    let settle = Duration::from_secs(3);

    let rss_before = proc_status("VmRSS");
    let errors = Arc::new(AtomicU64::new(0));
    let mut pipelines = Vec::with_capacity(streams);
    for i in 0..streams {
        let chain = if sources_only {
            String::new()
        } else {
            format!("dubchunker ! stsbridge name=sts url=\"{url}\" stream-id=bench-{i} ! ")
        };
        let desc = format!(
            "audiotestsrc is-live=true wave=pink-noise volume=0.3 samplesperbuffer=1024 \
             ! {CAPS} ! {chain}fakesink name=sink sync=true qos=true max-lateness=20000000"
        );
        let p = gst::parse::launch(&desc)?
            .downcast::<gst::Pipeline>()
            .map_err(|_| "not a pipeline")?;
        let errors = errors.clone();
        // Bus messages (one stsbridge/fragment per second and stream) are dropped at once;
        // errors are counted.
        p.bus()
            .expect("pipeline bus")
            .set_sync_handler(move |_, msg| {
                if let gst::MessageView::Error(e) = msg.view()
                    && errors.fetch_add(1, Ordering::Relaxed) < 3
                {
                    eprintln!("pipeline-bench: stream {i}: {}", e.error());
                }
                gst::BusSyncReply::Drop
            });
        p.set_state(gst::State::Playing)?;
        pipelines.push(p);
    }
    std::thread::sleep(settle);
    let cpu0 = Cpu::now();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds).saturating_sub(settle));
    let cpu = Cpu::now().since(cpu0);
    let window = t0.elapsed().as_secs_f64();
    let rss = proc_status("VmRSS");
    let hwm = proc_status("VmHWM");
    let threads = proc_status("Threads");

    let (mut fragments_min, mut fallbacks, mut late, mut dropped, mut rendered_min) =
        (u64::MAX, 0, 0, 0, u64::MAX);
    let (mut rtt_max, mut rtt_avg_sum) = (0u64, 0u64);
    for p in &pipelines {
        let sink = p.by_name("sink").expect("sink");
        let s = sink.property::<gst::Structure>("stats");
        dropped += stat_u64(&s, "dropped");
        rendered_min = rendered_min.min(stat_u64(&s, "rendered"));
        if let Some(b) = p.by_name("sts") {
            let s = b.property::<gst::Structure>("stats");
            fragments_min = fragments_min.min(stat_u64(&s, "fragments"));
            fallbacks += stat_u64(&s, "fallbacks");
            late += stat_u64(&s, "late-responses");
            rtt_max = rtt_max.max(stat_u64(&s, "rtt-max"));
            rtt_avg_sum += stat_u64(&s, "rtt-avg");
        }
    }
    for p in &pipelines {
        let _ = p.set_state(gst::State::Null);
    }
    let n = streams as f64;
    print_result(&[
        ("streams", n),
        ("cpu", cpu.total()),
        ("user", cpu.user),
        ("sys", cpu.sys),
        ("window", window),
        ("cores", cpu.total() / window),
        ("rss_before_kb", rss_before as f64),
        ("rss_kb", rss as f64),
        ("hwm_kb", hwm as f64),
        ("threads", threads as f64),
        (
            "fragments_min",
            if sources_only {
                f64::NAN
            } else {
                fragments_min as f64
            },
        ),
        ("rendered_min", rendered_min as f64),
        ("fallbacks", fallbacks as f64),
        ("late", late as f64),
        ("sink_dropped", dropped as f64),
        ("rtt_max_ms", rtt_max as f64 / 1e6),
        ("rtt_avg_ms", rtt_avg_sum as f64 / n / 1e6),
        ("errors", errors.load(Ordering::Relaxed) as f64),
    ]);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The parent: runs the children, measures the server, writes the report

/// Runs one child; returns its RESULT and the CPU time this process (the STS server, when it
/// runs here) used meanwhile.
fn run_child(args: &[String]) -> Result<(Res, f64), Error> {
    let exe = std::env::current_exe()?;
    let cpu0 = Cpu::now();
    let mut child = Command::new(exe)
        .arg("child")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut res = None;
    for line in BufReader::new(child.stdout.take().expect("piped stdout")).lines() {
        let line = line?;
        if let Some(rest) = line.strip_prefix("RESULT ") {
            let mut r = Res::new();
            for kv in rest.split_whitespace() {
                if let Some((k, v)) = kv.split_once('=') {
                    r.insert(k.to_owned(), v.parse().unwrap_or(f64::NAN));
                }
            }
            res = Some(r);
        }
    }
    let status = child.wait()?;
    let server_cpu = Cpu::now().since(cpu0).total();
    match res {
        Some(r) if status.success() => Ok((r, server_cpu)),
        _ => Err(format!("child {args:?} failed ({status})").into()),
    }
}

fn progress(msg: impl AsRef<str>) {
    eprintln!("pipeline-bench: {}", msg.as_ref());
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| (*x).to_owned()).collect()
}

struct Opts {
    runs: usize,
    quick: bool,
    only: Vec<String>,
    input: String,
    p3_fragments: u64,
    p4_seconds: u64,
    p4_streams: Vec<usize>,
    p5_fragments: u64,
    criterion: Option<String>,
}

/// Pipeline benchmarks of the dubbing elements (P1 overhead, P3 bridge throughput, P4
/// concurrency, P5 memory); prints a markdown report.
#[derive(clap::Parser, Debug)]
#[command(name = "pipeline-bench")]
struct Cli {
    /// Runs per figure (the median is reported) [default: 5, 3 with --quick].
    #[arg(long)]
    runs: Option<usize>,
    /// Shorter runs: fewer runs, fragments and streams.
    #[arg(long)]
    quick: bool,
    /// Phases to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "p1,p3,p4,p5")]
    only: Vec<String>,
    /// The file of P1.
    #[arg(long, default_value = "fixtures/speech-60s.mp4")]
    input: String,
    /// P3 fragments per run [default: 1000, 300 with --quick].
    #[arg(long)]
    p3_fragments: Option<u64>,
    /// P4 seconds per step [default: 20, 12 with --quick].
    #[arg(long)]
    p4_seconds: Option<u64>,
    /// P4 stream counts, comma-separated [default: 10,25,50,100,150,200,300; 10,50,100 with
    /// --quick].
    #[arg(long, value_delimiter = ',')]
    p4_streams: Vec<usize>,
    /// P5 fragments (one hour: 3600) [default: 3600, 1200 with --quick].
    #[arg(long)]
    p5_fragments: Option<u64>,
    /// Criterion's output directory: adds its figures to the report.
    #[arg(long, value_name = "DIR")]
    criterion: Option<String>,
}

fn parse_opts(args: &[String]) -> Opts {
    let cli = <Cli as clap::Parser>::parse_from(
        std::iter::once("pipeline-bench").chain(args.iter().map(String::as_str)),
    );
    let quick = cli.quick;
    let pick =
        |v: Option<u64>, normal: u64, short: u64| v.unwrap_or(if quick { short } else { normal });
    Opts {
        runs: cli.runs.unwrap_or(if quick { 3 } else { 5 }),
        quick,
        only: cli.only,
        input: cli.input,
        p3_fragments: pick(cli.p3_fragments, 1000, 300),
        p4_seconds: pick(cli.p4_seconds, 20, 12),
        p4_streams: if !cli.p4_streams.is_empty() {
            cli.p4_streams
        } else if quick {
            vec![10, 50, 100]
        } else {
            vec![10, 25, 50, 100, 150, 200, 300]
        },
        p5_fragments: pick(cli.p5_fragments, 3600, 1200),
        criterion: cli.criterion,
    }
}

/// One line of the summary table.
struct Summary {
    id: &'static str,
    figure: String,
    value: String,
    goal: &'static str,
    met: Option<bool>,
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "(info)",
    }
}

fn machine_section(opts: &Opts, load_before: &str, elapsed: f64) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|x| x.1))
        .unwrap_or("unknown")
        .trim()
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load_after = loadavg();
    let mut m = String::new();
    m.push_str("| machine | |\n|---|---|\n");
    m.push_str(&format!("| date | {date} |\n"));
    m.push_str(&format!("| CPU | {model}, {cores} cores |\n"));
    m.push_str(&format!(
        "| memory | {:.1} GiB |\n",
        mem_total_kb() as f64 / 1024.0 / 1024.0
    ));
    m.push_str(&format!(
        "| kernel / GStreamer | Linux {} / {} |\n",
        kernel.trim(),
        gst::version_string()
    ));
    m.push_str(&format!(
        "| load average (1, 5, 15 min) before / after | {load_before} / {load_after} |\n"
    ));
    m.push_str(&format!(
        "| runs per figure | {} (median){} |\n",
        opts.runs,
        if opts.quick { ", --quick" } else { "" }
    ));
    m.push_str(&format!(
        "| pipeline benchmark run time | {:.0} s |\n",
        elapsed
    ));
    m
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn mem_total_kb() -> u64 {
    let s = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn echo_server(faults: Faults) -> Result<StsServer, Error> {
    Ok(StsServer::start(ServerConfig {
        mode: Mode::Echo,
        faults,
        ..Default::default()
    })?)
}

fn p1(opts: &Opts, summary: &mut Vec<Summary>, out: &mut String) -> Result<(), Error> {
    let server = echo_server(Faults::default())?;
    let url = server.url();
    let variants: [(&str, Vec<String>); 3] = [
        (
            "full, STS in-process",
            s(&["p1", "--variant", "full", "--input", &opts.input]),
        ),
        (
            "full, STS in another process",
            s(&[
                "p1",
                "--variant",
                "full",
                "--input",
                &opts.input,
                "--url",
                &url,
            ]),
        ),
        (
            "identity baseline",
            s(&["p1", "--variant", "identity", "--input", &opts.input]),
        ),
    ];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); 3];
    let mut wall: Vec<Vec<f64>> = vec![Vec::new(); 3];
    let mut server_cpu: Vec<f64> = Vec::new();
    let mut dubbed: Vec<f64> = Vec::new();
    // Interleaved, so a neighbour's load spike hits every variant alike.
    for run in 0..opts.runs {
        for (i, (name, args)) in variants.iter().enumerate() {
            progress(format!("P1 run {}/{}: {name}", run + 1, opts.runs));
            let (r, srv) = run_child(args)?;
            cpu[i].push(get(&r, "cpu"));
            wall[i].push(get(&r, "wall"));
            if i == 1 {
                server_cpu.push(srv);
            }
            if i < 2 {
                dubbed.push(get(&r, "dubbed"));
                if get(&r, "fallbacks") > 0.0 {
                    return Err(format!("P1: fragments fell back: {r:?}").into());
                }
            }
        }
    }
    let base = median(&cpu[2]);
    let ratio_in = median(&cpu[0]) / base;
    let ratio_out = median(&cpu[1]) / base;
    let ratio_sum = (median(&cpu[1]) + median(&server_cpu)) / base;
    let per_run = |i: usize| -> (f64, f64) {
        let r: Vec<f64> = cpu[i].iter().zip(&cpu[2]).map(|(a, b)| a / b).collect();
        range(&r)
    };
    out.push_str("### P1: overhead of the dubbing elements (file, full speed)\n\n");
    out.push_str(&format!(
        "`{}` (60 s, H.264 + AAC) → demux → decode → dubchunker → stsbridge (echo STS) → avoffset \
         → AAC encode → mp4mux → filesink, no clock; baseline: the same description with \
         `identity` in place of the three elements. CPU = user + system of the pipeline process \
         from PLAYING to EOS; the STS server's own CPU is measured in its process.\n\n",
        opts.input
    ));
    out.push_str("| variant | CPU s (median) | CPU s min–max | wall s (median) | CPU ratio vs baseline (median; per-run min–max) |\n|---|---|---|---|---|\n");
    for (i, (name, _)) in variants.iter().enumerate() {
        let (lo, hi) = range(&cpu[i]);
        let ratio = if i == 2 {
            "1".to_owned()
        } else {
            let (a, b) = per_run(i);
            format!("{:.3} ({a:.3}–{b:.3})", median(&cpu[i]) / base)
        };
        out.push_str(&format!(
            "| {name} | {:.3} | {lo:.3}–{hi:.3} | {:.2} | {ratio} |\n",
            median(&cpu[i]),
            median(&wall[i]),
        ));
    }
    out.push_str(&format!(
        "| STS server alone (its process, during the run above) | {:.3} | {:.3}–{:.3} | | {:.3} with the pipeline |\n\n",
        median(&server_cpu),
        range(&server_cpu).0,
        range(&server_cpu).1,
        ratio_sum,
    ));
    out.push_str(&format!(
        "Fragments dubbed per run: {} (no fallback).\n\n",
        median(&dubbed)
    ));
    summary.push(Summary {
        id: "P1",
        figure: "CPU ratio full chain / identity, pipeline process only (STS elsewhere)".into(),
        value: format!("{ratio_out:.3}"),
        goal: "≤ 1.05",
        met: Some(ratio_out <= 1.05),
    });
    summary.push(Summary {
        id: "P1",
        figure: "CPU ratio with the echo STS in-process (its work counted)".into(),
        value: format!("{ratio_in:.3}"),
        goal: "≤ 1.05",
        met: Some(ratio_in <= 1.05),
    });
    server.stop();
    Ok(())
}

fn p3(opts: &Opts, summary: &mut Vec<Summary>, out: &mut String) -> Result<(), Error> {
    let server = echo_server(Faults::default())?;
    let windows = [1u32, 4, 16];
    // What goes over the wire: the stream's own format, or what speech recognizers take (the
    // echo answer then comes back at 16 kHz mono and is converted to 48 kHz stereo).
    // `loudness-match` (on by default) measures every original and every dub with the
    // ebur128 crate: shown apart.
    // Socket.IO (protocol=socketio, the server's Socket.IO side, wire-format=wav): the same
    // fragments over one session instead of one POST each (the server grants at most 10 in
    // flight, so 16 runs as 10).
    let wires: [(&str, &str, &str, bool, &str); 5] = [
        ("48 kHz stereo (the stream's own)", "0", "0", true, "http"),
        (
            "wire-rate=16000 wire-channels=1",
            "16000",
            "1",
            true,
            "http",
        ),
        (
            "48 kHz stereo, loudness-match=false",
            "0",
            "0",
            false,
            "http",
        ),
        ("Socket.IO, 48 kHz stereo", "0", "0", true, "socketio"),
        (
            "Socket.IO, 48 kHz stereo, loudness-match=false",
            "0",
            "0",
            false,
            "socketio",
        ),
    ];
    out.push_str("### P3: stsbridge throughput (non-live, local echo STS)\n\n");
    out.push_str(&format!(
        "`appsrc ! stsbridge ! fakesink`, {} fragments of 1 s 48 kHz stereo S16LE per run \
         (192 kB of PCM, ≈ 256 kB of JSON each way; 16 kHz mono on the wire: 32 kB, ≈ 43 kB). \
         Fragments per CPU second = fragments / CPU s of the pipeline process (what one core \
         sustains); the server runs in another process and is shown apart.\n\n",
        opts.p3_fragments
    ));
    out.push_str("| wire | max-in-flight | fragments/s (wall) | pipeline CPU s | fragments per CPU s (min–max) | server CPU s | fragments per CPU s, pipeline + server | rtt avg ms |\n|---|---|---|---|---|---|---|---|\n");
    let mut per: BTreeMap<(usize, u32), Vec<Res>> = BTreeMap::new();
    let mut srv: BTreeMap<(usize, u32), Vec<f64>> = BTreeMap::new();
    for run in 0..opts.runs {
        for (wi, (label, rate, channels, loudness, protocol)) in wires.iter().enumerate() {
            let url = if *protocol == "socketio" {
                server.sio_url()
            } else {
                server.url()
            };
            for w in windows {
                progress(format!(
                    "P3 run {}/{}: {label}, max-in-flight {w}",
                    run + 1,
                    opts.runs
                ));
                let mut args = s(&[
                    "appsrc",
                    "--url",
                    &url,
                    "--fragments",
                    &opts.p3_fragments.to_string(),
                    "--max-in-flight",
                    &w.to_string(),
                    "--wire-rate",
                    rate,
                    "--wire-channels",
                    channels,
                    "--protocol",
                    protocol,
                ]);
                if !loudness {
                    args.push("--no-loudness-match".into());
                }
                let (r, s_cpu) = run_child(&args)?;
                if get(&r, "dubbed") != opts.p3_fragments as f64 {
                    return Err(format!("P3: not every fragment dubbed: {r:?}").into());
                }
                per.entry((wi, w)).or_default().push(r);
                srv.entry((wi, w)).or_default().push(s_cpu);
            }
        }
    }
    for (wi, (label, _, _, _, _)) in wires.iter().enumerate() {
        for w in windows {
            let rs = &per[&(wi, w)];
            let col = |k: &str| -> Vec<f64> { rs.iter().map(|r| get(r, k)).collect() };
            let n = opts.p3_fragments as f64;
            let fps_cpu: Vec<f64> = col("cpu").iter().map(|c| n / c).collect();
            let fps_wall: Vec<f64> = col("wall").iter().map(|c| n / c).collect();
            let both: Vec<f64> = col("cpu")
                .iter()
                .zip(&srv[&(wi, w)])
                .map(|(c, s)| n / (c + s))
                .collect();
            let (lo, hi) = range(&fps_cpu);
            let m = median(&fps_cpu);
            out.push_str(&format!(
                "| {label} | {w} | {:.0} | {:.3} | **{m:.0}** ({lo:.0}–{hi:.0}) | {:.3} | {:.0} | {:.2} |\n",
                median(&fps_wall),
                median(&col("cpu")),
                median(&srv[&(wi, w)]),
                median(&both),
                median(&col("rtt_avg_ms")),
            ));
            summary.push(Summary {
                id: "P3",
                figure: format!("fragments per CPU second, {label}, max-in-flight {w}"),
                value: format!("{m:.0}"),
                goal: "≥ 1000 per core",
                met: Some(m >= 1000.0),
            });
        }
    }
    out.push('\n');
    server.stop();
    Ok(())
}

fn p4(opts: &Opts, summary: &mut Vec<Summary>, out: &mut String) -> Result<(), Error> {
    // 300 ms ± 100 ms: the server adds a uniform 0..=jitter to the delay.
    let server = echo_server(Faults {
        delay_ms: 200,
        jitter_ms: 200,
        ..Default::default()
    })?;
    let url = server.url();
    let secs = opts.p4_seconds.to_string();
    out.push_str("### P4: concurrent live streams in one process\n\n");
    out.push_str(&format!(
        "N × `audiotestsrc is-live=true wave=pink-noise ! {CAPS} ! dubchunker ! stsbridge ! \
         fakesink sync=true qos=true max-lateness=20000000`, each pipeline with its own \
         stsbridge (default settings: max-in-flight 3, latency 5 s, post-messages on, dropped by \
         a bus sync handler), one echo STS (another process) answering after 200–400 ms \
         (300 ± 100 ms). {} s per N; CPU over the last {} s (after a 3 s settle). A stream passes \
         with no fallback, no late response, no buffer late at the sink and no error.\n\n",
        opts.p4_seconds,
        opts.p4_seconds.saturating_sub(3)
    ));
    out.push_str("| N | fallbacks | late responses | late at sink | errors | min fragments per stream | rtt avg / max ms | CPU cores (pipelines) | CPU cores (server) | threads | RSS MiB | peak RSS MiB | pass |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    let row = |r: &Res, srv_cpu: f64, pass: bool| -> String {
        format!(
            "| {} | {} | {} | {} | {} | {} | {:.0} / {:.0} | {:.2} | {:.2} | {} | {:.0} | {:.0} | {} |\n",
            get(r, "streams"),
            get(r, "fallbacks"),
            get(r, "late"),
            get(r, "sink_dropped"),
            get(r, "errors"),
            get(r, "fragments_min"),
            get(r, "rtt_avg_ms"),
            get(r, "rtt_max_ms"),
            get(r, "cores"),
            srv_cpu / get(r, "window"),
            get(r, "threads"),
            get(r, "rss_kb") / 1024.0,
            get(r, "hwm_kb") / 1024.0,
            if pass { "yes" } else { "**no**" },
        )
    };
    let passes = |r: &Res| {
        get(r, "fallbacks") == 0.0
            && get(r, "late") == 0.0
            && get(r, "sink_dropped") == 0.0
            && get(r, "errors") == 0.0
            && get(r, "fragments_min") >= (opts.p4_seconds as f64 - 10.0).max(1.0)
    };
    let mut best: Option<(usize, Res, f64)> = None;
    for &n in &opts.p4_streams {
        progress(format!("P4: {n} live streams for {secs} s"));
        match run_child(&s(&[
            "p4",
            "--url",
            &url,
            "--streams",
            &n.to_string(),
            "--seconds",
            &secs,
        ])) {
            Ok((r, srv_cpu)) => {
                let pass = passes(&r);
                out.push_str(&row(&r, srv_cpu, pass));
                if !pass {
                    break;
                }
                best = Some((n, r, srv_cpu));
            }
            Err(e) => {
                out.push_str(&format!(
                    "| {n} | | | | run failed: {e} | | | | | | | | **no** |\n"
                ));
                break;
            }
        }
    }
    out.push('\n');
    let Some((n, first, first_srv)) = best else {
        summary.push(Summary {
            id: "P4",
            figure: "live streams at real time, zero late/fallback".into(),
            value: "none".into(),
            goal: "≥ 50",
            met: Some(false),
        });
        server.stop();
        return Ok(());
    };
    // Repeat the largest passing N for the median of its CPU and memory.
    let mut runs = vec![(first, first_srv)];
    let mut confirm = String::new();
    for i in 1..opts.runs.min(3) {
        progress(format!("P4: repeat {} of N = {n}", i + 1));
        let (r, srv_cpu) = run_child(&s(&[
            "p4",
            "--url",
            &url,
            "--streams",
            &n.to_string(),
            "--seconds",
            &secs,
        ]))?;
        confirm.push_str(&row(&r, srv_cpu, passes(&r)));
        runs.push((r, srv_cpu));
    }
    progress(format!("P4: {n} sources alone (baseline)"));
    let (src_only, _) = run_child(&s(&[
        "p4",
        "--streams",
        &n.to_string(),
        "--seconds",
        &secs,
        "--sources-only",
    ]))?;
    let all_pass = runs.iter().all(|(r, _)| passes(r));
    let cores: Vec<f64> = runs.iter().map(|(r, _)| get(r, "cores")).collect();
    let srv_cores: Vec<f64> = runs.iter().map(|(r, c)| c / get(r, "window")).collect();
    let hwm: Vec<f64> = runs.iter().map(|(r, _)| get(r, "hwm_kb")).collect();
    let marginal: Vec<f64> = runs
        .iter()
        .map(|(r, _)| (get(r, "rss_kb") - get(r, "rss_before_kb")) / n as f64)
        .collect();
    if !confirm.is_empty() {
        out.push_str(&format!(
            "Repeats of N = {n}:\n\n| N | fallbacks | late responses | late at sink | errors | min fragments per stream | rtt avg / max ms | CPU cores (pipelines) | CPU cores (server) | threads | RSS MiB | peak RSS MiB | pass |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n{confirm}\n"
        ));
    }
    let tested_max = opts.p4_streams.iter().copied().max().unwrap_or(0);
    out.push_str(&format!(
        "Largest N passing: **{n}**{} ({} of {} runs at that N passed). Median CPU at N = {n}: \
         {:.2} cores for the pipelines ({:.1} ms of CPU per stream per second), {:.2} cores \
         for the STS server; the {n} sources and sinks alone (`audiotestsrc ! fakesink`, same \
         settings) use {:.2} cores, so dubchunker + stsbridge cost ≈ {:.1} ms of CPU per \
         stream per second.\n\n",
        if n == tested_max {
            " (the largest N tried: the limit is higher)"
        } else {
            ""
        },
        runs.iter().filter(|(r, _)| passes(r)).count(),
        runs.len(),
        median(&cores),
        median(&cores) * 1000.0 / n as f64,
        median(&srv_cores),
        get(&src_only, "cores"),
        (median(&cores) - get(&src_only, "cores")) * 1000.0 / n as f64,
    ));
    summary.push(Summary {
        id: "P4",
        figure: "live streams at real time in one process, zero late/fallback".into(),
        value: format!(
            "{n}{} ({:.2} cores + {:.2} for the STS)",
            if n == tested_max { "+" } else { "" },
            median(&cores),
            median(&srv_cores)
        ),
        goal: "≥ 50",
        met: Some(n >= 50 && all_pass),
    });
    summary.push(Summary {
        id: "P5",
        figure: format!("memory per live stream at N = {n}: peak RSS / N (marginal RSS / N)"),
        value: format!(
            "{:.2} MiB ({:.2} MiB)",
            median(&hwm) / n as f64 / 1024.0,
            median(&marginal) / 1024.0
        ),
        goal: "(info)",
        met: None,
    });
    server.stop();
    Ok(())
}

fn p5(opts: &Opts, summary: &mut Vec<Summary>, out: &mut String) -> Result<(), Error> {
    // 100 ms ± 50 ms, answers out of order: the in-order release holds the early ones.
    let server = echo_server(Faults {
        delay_ms: 50,
        jitter_ms: 100,
        ..Default::default()
    })?;
    let url = server.url();
    let every = 100u64;
    let n = opts.p5_fragments;
    let runs = opts.runs.min(3);
    let mut rows = Vec::new();
    for run in 0..runs {
        progress(format!(
            "P5 run {}/{runs}: {n} fragments at max-in-flight 32",
            run + 1
        ));
        let (r, _) = run_child(&s(&[
            "appsrc",
            "--url",
            &url,
            "--fragments",
            &n.to_string(),
            "--max-in-flight",
            "32",
            "--rss-every",
            &every.to_string(),
        ]))?;
        if get(&r, "dubbed") != n as f64 {
            return Err(format!("P5: not every fragment dubbed: {r:?}").into());
        }
        rows.push(r);
    }
    // RSS is noisy from sample to sample (32 requests in flight, ≈ 0.7 MB each while they
    // last): compare the means of windows instead of single samples.
    let series = |r: &Res| -> Vec<(f64, f64)> {
        let mut v: Vec<(f64, f64)> = r
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("rss_at_")?.parse().ok()?, *v / 1024.0)))
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    };
    let window = |r: &Res, from: f64, to: f64| -> f64 {
        let v: Vec<f64> = series(r)
            .into_iter()
            .filter(|(k, _)| *k > from * n as f64 && *k <= to * n as f64)
            .map(|(_, v)| v)
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    // Least-squares slope after warm-up, in MiB per 1000 fragments.
    let slope = |r: &Res| -> f64 {
        let v: Vec<(f64, f64)> = series(r)
            .into_iter()
            .filter(|(k, _)| *k > 0.1 * n as f64)
            .collect();
        let m = v.len() as f64;
        let (sx, sy) = v.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
        let (mx, my) = (sx / m, sy / m);
        let (num, den) = v.iter().fold((0.0, 0.0), |(a, b), (x, y)| {
            (a + (x - mx) * (y - my), b + (x - mx) * (x - mx))
        });
        num / den * 1000.0
    };
    let col = |f: &dyn Fn(&Res) -> f64| -> Vec<f64> { rows.iter().map(f).collect() };
    let start = col(&|r| window(r, 0.1, 0.2));
    let mid = col(&|r| window(r, 0.45, 0.55));
    let end = col(&|r| window(r, 0.9, 1.0));
    let max = col(&|r| series(r).iter().map(|x| x.1).fold(0.0, f64::max));
    let min = col(&|r| {
        series(r)
            .iter()
            .filter(|(k, _)| *k > 0.1 * n as f64)
            .map(|x| x.1)
            .fold(f64::INFINITY, f64::min)
    });
    let growth: Vec<f64> = end.iter().zip(&start).map(|(e, s)| e - s).collect();
    let slopes = col(&slope);
    let pct = |f: f64| (n as f64 * f) as u64;
    out.push_str("### P5: memory over one hour of audio\n\n");
    out.push_str(&format!(
        "`appsrc ! stsbridge max-in-flight=32 ! fakesink`, non-live, {n} × 1 s 48 kHz stereo \
         fragments ({:.1} h of audio) against an echo STS answering after 50–150 ms (out of \
         order, so answered fragments wait for older ones), as fast as it goes; VmRSS of the \
         pipeline process sampled every {every} fragments. Each value is the mean of the samples \
         in a window (single samples swing by a few MiB with the requests in flight); median of \
         {runs} runs.\n\n",
        n as f64 / 3600.0
    ));
    out.push_str("| RSS | MiB (median) |\n|---|---|\n");
    out.push_str(&format!(
        "| start: fragments {}–{} | {:.1} |\n| middle: fragments {}–{} | {:.1} |\n\
         | end: fragments {}–{n} | {:.1} |\n| min / max of the samples after warm-up | {:.1} / {:.1} |\n\
         | growth start → end | {:+.1} |\n| trend (least squares) | {:+.2} MiB per 1000 fragments |\n\
         | peak RSS (VmHWM) | {:.1} |\n\n",
        pct(0.1),
        pct(0.2),
        median(&start),
        pct(0.45),
        pct(0.55),
        median(&mid),
        pct(0.9),
        median(&end),
        median(&min),
        median(&max),
        median(&growth),
        median(&slopes),
        median(&col(&|r| get(r, "hwm_kb") / 1024.0)),
    ));
    let wall = median(&col(&|r| get(r, "wall")));
    out.push_str(&format!(
        "Run time {:.1} s ({:.0} fragments/s, {:.0}× real time); every fragment dubbed.\n\n",
        wall,
        n as f64 / wall,
        n as f64 / wall
    ));
    // Flat: the end window no more than 2 MiB (or 5 %) above the start window.
    let g = median(&growth);
    let flat = g <= (median(&start) * 0.05).max(2.0);
    summary.push(Summary {
        id: "P5",
        figure: format!(
            "RSS over {:.1} h of audio at max-in-flight 32 (start / middle / end)",
            n as f64 / 3600.0
        ),
        value: format!(
            "{:.1} / {:.1} / {:.1} MiB ({g:+.1}; trend {:+.2} MiB per 1000 fragments)",
            median(&start),
            median(&mid),
            median(&end),
            median(&slopes),
        ),
        goal: "flat",
        met: Some(flat),
    });
    server.stop();
    Ok(())
}

/// Criterion's results (`DIR/<group>/<bench>/new/{estimates,benchmark}.json`) as a table.
fn criterion_section(dir: &str) -> Option<String> {
    let mut rows = Vec::new();
    for group in std::fs::read_dir(dir).ok()?.flatten() {
        let Ok(benches) = std::fs::read_dir(group.path()) else {
            continue;
        };
        for bench in benches.flatten() {
            let new = bench.path().join("new");
            let (Ok(est), Ok(meta)) = (
                std::fs::read_to_string(new.join("estimates.json")),
                std::fs::read_to_string(new.join("benchmark.json")),
            ) else {
                continue;
            };
            let (Ok(est), Ok(meta)) = (
                serde_json::from_str::<serde_json::Value>(&est),
                serde_json::from_str::<serde_json::Value>(&meta),
            ) else {
                continue;
            };
            let ns = est["median"]["point_estimate"].as_f64().unwrap_or(f64::NAN);
            let id = meta["full_id"].as_str().unwrap_or("?").to_owned();
            let thrpt = if let Some(e) = meta["throughput"]["Elements"].as_f64() {
                let unit = if id.starts_with("breaker") {
                    "calls/s"
                } else {
                    "frames/s"
                };
                format!("{:.3e} {unit}", e / ns * 1e9)
            } else if let Some(b) = meta["throughput"]["Bytes"].as_f64() {
                format!("{:.0} MiB/s of PCM", b / ns * 1e9 / 1048576.0)
            } else {
                String::new()
            };
            let time = if ns >= 1e6 {
                format!("{:.3} ms", ns / 1e6)
            } else if ns >= 1e3 {
                format!("{:.2} µs", ns / 1e3)
            } else {
                format!("{ns:.1} ns")
            };
            rows.push(format!("| `{id}` | {time} | {thrpt} |\n"));
        }
    }
    if rows.is_empty() {
        return None;
    }
    rows.sort();
    let mut s = String::from(
        "### Micro-benchmarks (criterion, `cargo bench --bench hot_paths`)\n\n\
         Median time per iteration. `accumulator/*`: 10 s of 48 kHz stereo pushed in 1024-frame \
         buffers, every cut taken; `wire/*`: one 1 s 48 kHz stereo fragment (request body \
         build = JSON + base64; judge = JSON parse + base64 decode of the echo answer); \
         `breaker/*`: one request's calls; `mix_render/*`: one 1 s 48 kHz stereo output \
         fragment.\n\n| benchmark | time | throughput |\n|---|---|---|\n",
    );
    for r in rows {
        s.push_str(&r);
    }
    s.push('\n');
    Some(s)
}

fn parent(args: &[String]) -> Result<(), Error> {
    let opts = parse_opts(args);
    gst::init()?;
    let t0 = Instant::now();
    let load_before = loadavg();
    let mut summary = Vec::new();
    let mut details = String::new();
    let want = |p: &str| opts.only.iter().any(|o| o == p);
    if want("p1") {
        p1(&opts, &mut summary, &mut details)?;
    }
    if want("p3") {
        p3(&opts, &mut summary, &mut details)?;
    }
    if want("p4") {
        // Also P5's memory per stream.
        p4(&opts, &mut summary, &mut details)?;
    }
    if want("p5") {
        p5(&opts, &mut summary, &mut details)?;
    }
    let elapsed = t0.elapsed().as_secs_f64();

    let mut doc = String::new();
    doc.push_str(&machine_section(&opts, &load_before, elapsed));
    doc.push_str(
        "\nThe machine is shared with other work while this runs: wall-clock figures are \
         noisy; CPU-time figures (getrusage of the measuring process) much less so.\n\n",
    );
    doc.push_str("| | figure | measured | goal | |\n|---|---|---|---|---|\n");
    // P5 lines last, in order.
    summary.sort_by_key(|s| s.id);
    for s in &summary {
        doc.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            s.id,
            s.figure,
            s.value,
            s.goal,
            verdict(s.met)
        ));
    }
    doc.push('\n');
    doc.push_str(&details);
    if let Some(dir) = &opts.criterion
        && let Some(c) = criterion_section(dir)
    {
        doc.push_str(&c);
    }
    print!("{doc}");
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let res = match args.first().map(String::as_str) {
        Some("child") => match args.get(1) {
            Some(kind) => child(kind, &args[2..]),
            None => Err("child needs a kind".into()),
        },
        _ => parent(&args),
    };
    if let Err(e) = res {
        eprintln!("pipeline-bench: {e}");
        std::process::exit(1);
    }
}
