//! Throughput of `stsbridge` against an STS endpoint: `appsrc ! stsbridge ! fakesink`, non-live,
//! as fast as the answers come back. Prints fragments/s (wall clock) and fragments per CPU
//! second of this process (what one core sustains).
//!
//! ```text
//! # the reference server in its own process, the pipeline pinned to one core:
//! cargo build --release -p dubbing-sts-server --example stsbridge-bench
//! target/release/sts-server --mode echo --port 8000 &
//! taskset -c 0 target/release/examples/stsbridge-bench --url http://127.0.0.1:8000/api/v1/sts/process
//! # or with an in-process server (its CPU time is then counted too):
//! cargo run --release --example stsbridge-bench -- --fragments 2000
//! ```
//!
//! Options: `--url U`, `--fragments N` (default 1000), `--fragment-ms MS` (1000), `--rate HZ`
//! (48000), `--channels N` (2), `--max-in-flight N` (8).

use std::time::Instant;

use gst::prelude::*;

struct Args {
    url: Option<String>,
    fragments: u64,
    fragment_ms: u64,
    rate: u32,
    channels: u32,
    max_in_flight: u32,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        url: None,
        fragments: 1000,
        fragment_ms: 1000,
        rate: 48000,
        channels: 2,
        max_in_flight: 8,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or_else(|| format!("{k} needs a value"));
        let num = |s: String| s.parse::<u64>().map_err(|e| format!("{k}: {e}"));
        match k.as_str() {
            "--url" => a.url = Some(v()?),
            "--fragments" => a.fragments = num(v()?)?,
            "--fragment-ms" => a.fragment_ms = num(v()?)?,
            "--rate" => a.rate = num(v()?)? as u32,
            "--channels" => a.channels = num(v()?)? as u32,
            "--max-in-flight" => a.max_in_flight = num(v()?)? as u32,
            "-h" | "--help" => {
                println!(
                    "stsbridge-bench [--url U] [--fragments N] [--fragment-ms MS] [--rate HZ] [--channels N] [--max-in-flight N]"
                );
                std::process::exit(0);
            }
            _ => return Err(format!("unknown option {k}")),
        }
    }
    Ok(a)
}

/// User + system CPU time of this process, in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces) start at ") ".
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 after the state.
    (ticks(11) + ticks(12)) / 100.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    gst::init()?;
    gstdubbing::plugin_register_static()?;

    let server = match &args.url {
        Some(_) => None,
        None => Some(dubbing_sts_server::StsServer::start(Default::default())?),
    };
    let url = args
        .url
        .clone()
        .unwrap_or_else(|| server.as_ref().unwrap().url());

    let frames = args.rate as u64 * args.fragment_ms / 1000;
    let caps = gst_audio::AudioCapsBuilder::new_interleaved()
        .format(gst_audio::AudioFormat::S16le)
        .rate(args.rate as i32)
        .channels(args.channels as i32)
        .build();
    let pipeline = gst::Pipeline::new();
    let src = gst_app::AppSrc::builder()
        .caps(&caps)
        .format(gst::Format::Time)
        .max_buffers(4)
        .block(true)
        .build();
    let bridge = gst::ElementFactory::make("stsbridge")
        .property("url", &url)
        .property("max-in-flight", args.max_in_flight)
        .property("post-messages", false)
        .build()?;
    let sink = gst::ElementFactory::make("fakesink")
        .property("sync", false)
        .build()?;
    pipeline.add_many([src.upcast_ref(), &bridge, &sink])?;
    gst::Element::link_many([src.upcast_ref(), &bridge, &sink])?;
    pipeline.set_state(gst::State::Playing)?;

    // One fragment of noise-like audio, reused (the element never looks at the content).
    let samples = (frames * args.channels as u64) as usize;
    let data: Vec<u8> = (0..samples)
        .flat_map(|i| (((i * 7919) % 20011) as i16 - 10000).to_le_bytes())
        .collect();
    let proto = gst::Buffer::from_slice(data);

    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let feeder = {
        let src = src.clone();
        let n = args.fragments;
        let rate = args.rate as u64;
        std::thread::spawn(move || {
            for i in 0..n {
                let mut b = proto.copy();
                {
                    let b = b.get_mut().unwrap();
                    let start = i * frames;
                    let pts = start * 1_000_000_000 / rate;
                    let end = (start + frames) * 1_000_000_000 / rate;
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
    let bus = pipeline.bus().unwrap();
    for msg in bus.iter_timed(gst::ClockTime::NONE) {
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => {
                return Err(format!("{} ({:?})", e.error(), e.debug()).into());
            }
            _ => {}
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    feeder.join().ok();
    let stats = bridge.property::<gst::Structure>("stats");
    pipeline.set_state(gst::State::Null)?;

    let n = args.fragments as f64;
    let dubbed = stats.get::<u64>("dubbed").unwrap_or(0);
    println!(
        "| fragments | fragment | dubbed | wall s | fragments/s | CPU s | fragments per CPU s | rtt avg ms | max in flight |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} ms {} Hz {} ch | {} | {:.2} | {:.0} | {:.2} | {:.0} | {:.2} | {} |",
        args.fragments,
        args.fragment_ms,
        args.rate,
        args.channels,
        dubbed,
        wall,
        n / wall,
        cpu,
        n / cpu.max(1e-9),
        stats.get::<u64>("rtt-avg").unwrap_or(0) as f64 / 1e6,
        stats.get::<u64>("max-in-flight").unwrap_or(0),
    );
    if server.is_some() {
        println!("(in-process server: its CPU time is included)");
    }
    Ok(())
}
