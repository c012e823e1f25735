//! Live benchmarks of the stream worker between real servers on 127.0.0.1 (GStreamer's RTSP
//! server playing the fixture in real time, nginx-rtmp, the echo STS in this process): prints a
//! markdown report.
//!
//! ```text
//! cargo build --release -p dubbing-worker --bin dubbing-worker --example live-bench
//! target/release/examples/live-bench floor   [--offsets 1,1.5,2,3] [--seconds 12]
//! target/release/examples/live-bench density [--streams 10,20,40,60,70,80] [--seconds 20]
//!     [--lean] [--baseline-only]
//! ```
//!
//! * `floor`: one worker per A/V offset (1 s fixed fragments, then the default 0.5–1.5 s
//!   silence boundaries): the offset it used, the published delay it reports (`/status`), the
//!   wall delay from the RTSP server's departure of a frame to nginx-rtmp's arrival is not
//!   measured here (see the live tests); the worker's log says when it raised the offset.
//! * `density`: N `dubbing-worker` processes at once, each pulling its own RTSP path and
//!   publishing its own RTMP path, in real time; N rises until a fragment falls back, an output
//!   falls more than 100 ms behind its offset, or a worker fails. Per N: CPU per stream
//!   (/proc/<pid>/stat over the measuring window), RSS and PSS per process (PSS shares the
//!   pages of the libraries every process maps among them), and the same
//!   for `gst-launch-1.0` running the worker's own description with `identity` in place of
//!   `dubchunker ! stsbridge ! avoffset` (`Chain::live_pipeline(…, false)`'s launch line).

#[path = "../crates/worker/tests/common/live.rs"]
mod live;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dubbing_sts_server::{ServerConfig, StsServer};
use dubbing_worker::builder::PublicationKind;
use dubbing_worker::pipeline::{Chain, LiveInput, LiveUrls};
use live::{NginxRtmp, Proc, RtspServer, http_get, wait_for};

type Error = Box<dyn std::error::Error>;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/speech-60s.mp4");

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn list(args: &[String], name: &str, default: &str) -> Vec<f64> {
    arg(args, name)
        .unwrap_or_else(|| default.into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

fn worker_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .map(|d| d.join("dubbing-worker"))
        .expect("target dir")
}

/// utime + stime of a process, seconds.
fn cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Busy and total jiffies of the whole machine (/proc/stat).
fn machine_jiffies() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: f64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    (total - idle, total)
}

/// (VmRSS, Pss: its share of pages shared with other processes, such as the GStreamer
/// libraries) of a process, MB.
fn rss_mb(pid: u32) -> Option<(f64, f64)> {
    let kb = |file: &str, key: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/{file}"))
            .ok()?
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
    };
    Some((
        kb("status", "VmRSS:")? / 1024.0,
        kb("smaps_rollup", "Pss:")? / 1024.0,
    ))
}

fn status(port: u16) -> Option<serde_json::Value> {
    let (code, body) = http_get(
        SocketAddr::from(([127, 0, 0, 1], port)),
        "/status",
        Duration::from_secs(2),
    )
    .ok()?;
    (code == 200).then(|| serde_json::from_str(&body).ok())?
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Env {
    _sts: StsServer,
    sts_url: String,
    dir: PathBuf,
}

fn start_worker(
    env: &Env,
    name: &str,
    rtsp: &RtspServer,
    nginx: &NginxRtmp,
    extra: &[(&str, String)],
) -> Result<live::Worker, Error> {
    let input = rtsp.url();
    let output = nginx.url(&format!("live/{name}/out"));
    let mut vars = vec![
        ("WORKER_STS_SERVICE_URL", env.sts_url.clone()),
        ("WORKER_METRICS_PORT", "0".to_string()),
    ];
    vars.extend(extra.iter().cloned());
    Ok(live::Worker::start(
        &worker_bin(),
        &["--stream-id", name, "--input", &input, "--output", &output],
        &vars,
        &env.dir.join(format!("{name}.log")),
    )?)
}

fn floor(args: &[String], env: &Env) -> Result<(), Error> {
    let offsets = list(args, "--offsets", "1,1.5,2,3");
    let seconds: u64 = arg(args, "--seconds").map_or(12, |s| s.parse().unwrap_or(12));
    println!("## Latency floor (echo STS answering at once)\n");
    println!(
        "| boundary | requested offset | offset used | published delay (median of `/status`) | fallbacks |"
    );
    println!("|---|---|---|---|---|");
    let runs: Vec<(&str, f64)> = offsets
        .iter()
        .map(|o| ("fixed", *o))
        .chain(
            offsets
                .iter()
                .filter(|o| **o >= 2.0)
                .map(|o| ("silence", *o)),
        )
        .collect();
    for (n, (boundary, offset)) in runs.into_iter().enumerate() {
        let name = format!("floor{n}");
        let rtsp = RtspServer::start(Path::new(FIXTURE), &format!("/live/{name}/in"))?;
        let nginx = NginxRtmp::start(&env.dir.join(&name), &[&format!("live/{name}")])?;
        let mut w = start_worker(
            env,
            &name,
            &rtsp,
            &nginx,
            &[
                ("WORKER_BOUNDARY", boundary.to_string()),
                (
                    "WORKER_AV_OFFSET_NS",
                    format!("{}", (offset * 1e9).round() as u64),
                ),
            ],
        )?;
        let port = w.metrics_port;
        wait_for(Duration::from_secs(20), Duration::from_millis(200), || {
            status(port)
                .and_then(|s| s["languages"][0]["published_delay_ms"].as_f64())
                .map(|_| ())
        })
        .ok_or("nothing published")?;
        let mut delays = Vec::new();
        let mut last = serde_json::Value::Null;
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(seconds) {
            if let Some(s) = status(port) {
                if let Some(d) = s["languages"][0]["published_delay_ms"].as_f64() {
                    delays.push(d);
                }
                last = s;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let used = last["av_offset_ns"].as_f64().unwrap_or(f64::NAN) / 1e9;
        println!(
            "| {boundary} | {offset:.1} s | {used:.1} s | {:.2} s | {} |",
            median(delays) / 1000.0,
            last["languages"][0]["fallbacks"]
        );
        let _ = w.proc.stop(Duration::from_secs(1));
    }
    println!();
    Ok(())
}

/// One density step: per process (cpu per stream in cores, rss MB, hwm MB) and whether the
/// step held (no fallback, no output behind, no exit).
struct Step {
    /// Share of the machine's CPU time busy over the window (all processes).
    machine_busy: f64,
    cpu: Vec<f64>,
    rss: Vec<f64>,
    pss: Vec<f64>,
    failure: Option<String>,
}

/// The baseline's launch line: `identity` in place of the three elements, and with `lean`
/// also without the tee and queues a single output does not need (what the thread hand-offs
/// cost): those are left out of the typed graph's line by name.
fn baseline_description(input: &LiveInput, lean: bool) -> Result<String, Error> {
    let chain = Chain::default();
    let urls = LiveUrls::new(input.url(), vec!["rtmp://127.0.0.1/live/x".into()])?;
    let p = chain.live_pipeline(&urls, None, PublicationKind::RtmpSink, false)?;
    let mut d = p.to_launch_line();
    if lean {
        for (from, to) in [
            (
                " ! tee name=atee  atee. ! queue name=aq0 max-size-time=3000000000 max-size-buffers=0 max-size-bytes=0 ! ",
                " ! ",
            ),
            (" ! queue name=amq0 ! ", " ! "),
            (
                "vin. ! tee name=vtee  vtee. ! queue name=vq0 max-size-time=0 max-size-buffers=0 max-size-bytes=0 ! mux0.",
                "vin. ! mux0.",
            ),
        ] {
            if !d.contains(from) {
                return Err(format!("no {from:?} in {d}").into());
            }
            d = d.replacen(from, to, 1);
        }
    }
    Ok(d)
}

fn density_step(env: &Env, n: usize, seconds: u64, baseline: Option<bool>) -> Result<Step, Error> {
    let tag = match baseline {
        None => "d",
        Some(false) => "b",
        Some(true) => "l",
    };
    let names: Vec<String> = (0..n).map(|i| format!("{tag}{n}x{i}")).collect();
    let apps: Vec<String> = names.iter().map(|s| format!("live/{s}")).collect();
    let app_refs: Vec<&str> = apps.iter().map(String::as_str).collect();
    let nginx = NginxRtmp::start(&env.dir.join(format!("nginx-{tag}{n}")), &app_refs)?;
    let mut servers = Vec::new();
    for s in &names {
        servers.push(RtspServer::start(
            Path::new(FIXTURE),
            &format!("/live/{s}/in"),
        )?);
    }
    enum P {
        Worker(live::Worker),
        Launch(Proc),
    }
    let mut procs = Vec::new();
    for (i, s) in names.iter().enumerate() {
        if let Some(lean) = baseline {
            let input = LiveInput::parse(&servers[i].url())?;
            let d = baseline_description(&input, lean)?;
            // argv as a shell would pass it: one element per token, the locations (which hold
            // a space) as single elements.
            let mut argv = vec!["-q".to_string()];
            for token in d.split_whitespace() {
                argv.push(token.to_string());
                if token == "name=src" {
                    argv.push(format!("location={}", servers[i].url()));
                } else if token == "name=out0" {
                    argv.push(format!(
                        "location={} live=1",
                        nginx.url(&format!("live/{s}/out"))
                    ));
                }
            }
            // A quoted value with a space would be split (none has one).
            if argv.iter().any(|a| a.matches('"').count() % 2 == 1) {
                return Err(format!("quoted value in the baseline: {argv:?}").into());
            }
            let mut cmd = Command::new("gst-launch-1.0");
            cmd.args(&argv).stdout(Stdio::null());
            procs.push(P::Launch(Proc::spawn(
                "gst-launch",
                cmd,
                &env.dir.join(format!("{s}.log")),
            )?));
        } else {
            procs.push(P::Worker(start_worker(env, s, &servers[i], &nginx, &[])?));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let pid = |p: &P| match p {
        P::Worker(w) => w.proc.pid(),
        P::Launch(l) => l.pid(),
    };
    // Every output publishing.
    let up = wait_for(Duration::from_secs(30), Duration::from_millis(500), || {
        names
            .iter()
            .all(|s| {
                nginx
                    .stream(&format!("live/{s}"), "out")
                    .is_some_and(|st| st.bytes_in > 0)
            })
            .then_some(())
    });
    let mut failure = up
        .is_none()
        .then(|| "not every output published within 30 s".to_string());
    // Fallbacks while 40 processes start at once are not the steady state: count from here.
    let fallbacks0: Vec<u64> = procs
        .iter()
        .map(|p| match p {
            P::Worker(w) => status(w.metrics_port)
                .and_then(|s| s["languages"][0]["fallbacks"].as_u64())
                .unwrap_or(0),
            P::Launch(_) => 0,
        })
        .collect();
    let cpu0: Vec<Option<f64>> = procs.iter().map(|p| cpu_s(pid(p))).collect();
    let machine0 = machine_jiffies();
    let t0 = Instant::now();
    while failure.is_none() && t0.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_secs(2));
        for (i, p) in procs.iter_mut().enumerate() {
            let exited = match p {
                P::Worker(w) => w.proc.try_wait(),
                P::Launch(l) => l.try_wait(),
            };
            if let Some(e) = exited {
                failure = Some(format!("{} exited {e}", names[i]));
                break;
            }
            if let P::Worker(w) = p
                && let Some(s) = status(w.metrics_port)
            {
                let l = &s["languages"][0];
                let offset_ms = s["av_offset_ns"].as_f64().unwrap_or(0.0) / 1e6;
                let behind = l["published_delay_ms"].as_f64().unwrap_or(0.0) - offset_ms;
                if l["fallbacks"].as_u64().unwrap_or(0) > fallbacks0[i] {
                    failure = Some(format!("{}: a fragment fell back", names[i]));
                } else if behind > 100.0 {
                    failure = Some(format!(
                        "{}: output {behind:.0} ms behind its offset",
                        names[i]
                    ));
                }
            }
        }
    }
    let mut cpu1: Vec<Option<f64>> = procs.iter().map(|p| cpu_s(pid(p))).collect();
    let machine1 = machine_jiffies();
    let window = t0.elapsed().as_secs_f64();
    let mut step = Step {
        machine_busy: (machine1.0 - machine0.0) / (machine1.1 - machine0.1).max(1.0),
        cpu: Vec::new(),
        rss: Vec::new(),
        pss: Vec::new(),
        failure,
    };
    for ((p, c0), c1) in procs.iter().zip(&cpu0).zip(cpu1.iter_mut()) {
        let id = pid(p);
        if let (Some(c0), Some(c1)) = (c0, c1.take()) {
            step.cpu.push((c1 - c0) / window);
        }
        if let Some((rss, pss)) = rss_mb(id) {
            step.rss.push(rss);
            step.pss.push(pss);
        }
    }
    for p in &mut procs {
        match p {
            P::Worker(w) => {
                let _ = w.proc.stop(Duration::from_millis(200));
            }
            P::Launch(l) => {
                let _ = l.stop(Duration::from_millis(200));
            }
        }
    }
    Ok(step)
}

fn density(args: &[String], env: &Env) -> Result<(), Error> {
    let steps = list(args, "--streams", "10,20,40,60,70,80");
    let seconds: u64 = arg(args, "--seconds").map_or(20, |s| s.parse().unwrap_or(20));
    println!("## Density: dubbing-worker processes at once (2 cores, echo STS)\n");
    println!(
        "| streams | held | CPU per stream (cores, median) | workers' CPU (cores) | machine busy | RSS per process (median / max, MB) | PSS per process (median, MB) | why not |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let row = |n: usize, what: &str, s: &Step| {
        println!(
            "| {n}{what} | {} | {:.3} | {:.2} | {:.0} % | {:.0} / {:.0} | {:.0} | {} |",
            if s.failure.is_none() { "yes" } else { "no" },
            median(s.cpu.clone()),
            s.cpu.iter().sum::<f64>(),
            s.machine_busy * 100.0,
            median(s.rss.clone()),
            s.rss.iter().copied().fold(0.0, f64::max),
            median(s.pss.clone()),
            s.failure.clone().unwrap_or_default()
        );
    };
    let first = steps.first().copied().unwrap_or(10.0) as usize;
    let b = density_step(env, first, seconds, Some(false))?;
    row(first, " (identity baseline, gst-launch-1.0)", &b);
    if args.iter().any(|a| a == "--lean") {
        let l = density_step(env, first, seconds, Some(true))?;
        row(first, " (identity baseline without tee and queues)", &l);
    }
    if args.iter().any(|a| a == "--baseline-only") {
        println!();
        return Ok(());
    }
    for n in steps {
        let s = density_step(env, n as usize, seconds, None)?;
        row(n as usize, "", &s);
        if s.failure.is_some() {
            break;
        }
    }
    println!();
    Ok(())
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    gst::init()?;
    let sts = StsServer::start(ServerConfig::default())?;
    let dir = std::env::temp_dir().join(format!("live-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let env = Env {
        sts_url: sts.url(),
        _sts: sts,
        dir,
    };
    if !worker_bin().is_file() {
        return Err(format!(
            "{} not found: cargo build --release -p dubbing-worker --bin dubbing-worker",
            worker_bin().display()
        )
        .into());
    }
    match args.first().map(String::as_str) {
        Some("floor") => floor(&args, &env)?,
        Some("density") => density(&args, &env)?,
        _ => {
            eprintln!("usage: live-bench floor|density [options] (see the source's header)");
            std::process::exit(2);
        }
    }
    eprintln!("logs in {}", env.dir.display());
    Ok(())
}
