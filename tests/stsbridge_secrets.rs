//! The API key reaches the server and nowhere else: not the GStreamer log at the highest
//! level, not a pipeline dump, not `gst-launch-1.0 -v`, not `gst-inspect-1.0`.
//! (Its own test binary: it turns on every debug category for the whole process.)

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use dubbing_sts_server::{ServerConfig, StsServer};
use gst::prelude::*;

const KEY: &str = "sk-live-7f3a9c1e-secret";

fn plugin_dir() -> std::path::PathBuf {
    // target/<profile>/deps/<test binary> → target/<profile>/libgstdubbing.so
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    assert!(
        dir.join("libgstdubbing.so").exists(),
        "libgstdubbing.so not built in {} (run `cargo build` first, as scripts/test.sh does)",
        dir.display()
    );
    dir
}

#[test]
fn api_key_never_leaks() {
    init();
    let srv = StsServer::start(ServerConfig {
        api_key: Some(KEY.into()),
        ..Default::default()
    })
    .unwrap();

    // Every category at MEMDUMP, captured in memory.
    let log = Arc::new(Mutex::new(String::new()));
    let l = log.clone();
    gst::log::remove_default_log_function();
    // Only the category and the message: formatting the object would take its lock, which
    // some GStreamer code logs under.
    gst::log::add_log_function(move |cat, _level, _file, _func, _line, _obj, msg| {
        use std::fmt::Write;
        let text = msg.get().map(|m| m.to_string()).unwrap_or_default();
        let mut l = l.lock().unwrap();
        let _ = writeln!(l, "{} {}", cat.name(), text);
    });
    gst::log::set_default_threshold(gst::DebugLevel::Memdump);

    let mut b = Bridge::new(false, 16000, 1, 0, |b| {
        b.set_property("url", srv.url());
        b.set_property("api-key", KEY);
    });
    for seq in 0..3 {
        b.push(&test_audio(seq, 1600, 1));
    }
    assert!(b.wait_output(3, Duration::from_secs(10)));
    let dot = b.pipeline.debug_to_dot_data(gst::DebugGraphDetails::all());
    let out = b.finish(Duration::from_secs(10));
    // A URL with credentials in it: they never reach the log either.
    let mut c = Bridge::new(false, 16000, 1, 0, |b| {
        b.set_property(
            "url",
            "http://user:pw-hidden-42@127.0.0.1:1/api/v1/sts/process",
        );
        b.set_property("max-retries", 0u32);
    });
    c.push(&test_audio(0, 1600, 1));
    let cred = c.finish(Duration::from_secs(10));
    assert_eq!(cred.reasons(), vec!["transport"]);
    assert!(!cred.fragment_msgs[0].to_string().contains("pw-hidden"));
    // A key in the URL's query string (issue 22, 5): logged at INFO and read back by `url`
    // (pipeline dumps, gst-inspect) before.
    let mut q = Bridge::new(false, 16000, 1, 0, |b| {
        b.set_property(
            "url",
            "http://127.0.0.1:1/api/v1/sts/process?api_key=sk-query-31x",
        );
        b.set_property("max-retries", 0u32);
    });
    q.push(&test_audio(0, 1600, 1));
    let qdot = q.pipeline.debug_to_dot_data(gst::DebugGraphDetails::all());
    let query = q.finish(Duration::from_secs(10));
    assert_eq!(query.reasons(), vec!["transport"]);
    assert!(qdot.contains("api_key=***"), "{qdot}");
    assert!(
        !qdot.contains("sk-query-31x"),
        "query key in the pipeline dump"
    );
    assert!(!query.fragment_msgs[0].to_string().contains("sk-query-31x"));
    gst::log::set_default_threshold(gst::DebugLevel::None);

    // The key did its job...
    assert_eq!(out.outcomes(), vec!["dubbed"; 3]);
    for r in srv.requests() {
        assert_eq!(r.authorization.as_deref(), Some(&*format!("Bearer {KEY}")));
    }
    // ...and shows nowhere.
    let log = log.lock().unwrap().clone();
    assert!(log.contains("stsbridge"), "the log capture works");
    assert!(log.len() > 10_000, "a full debug log was captured");
    assert!(!log.contains(KEY), "API key in the debug log");
    assert!(
        !log.contains("sk-live"),
        "part of the API key in the debug log"
    );
    assert!(
        !log.contains("sk-query-31x"),
        "a key in the URL's query string in the debug log"
    );
    assert!(dot.contains("stsbridge"));
    assert!(!dot.contains(KEY), "API key in the pipeline dump");
    for m in &out.fragment_msgs {
        assert!(!m.to_string().contains(KEY));
    }
    assert!(!out.stats.to_string().contains(KEY));

    // gst-launch-1.0 -v prints every readable property it is notified of.
    let dir = plugin_dir();
    let launch = std::process::Command::new("gst-launch-1.0")
        .env("GST_PLUGIN_PATH", &dir)
        .env("GST_DEBUG", "*:6")
        .args([
            "-v",
            "audiotestsrc",
            "num-buffers=5",
            "!",
            "audio/x-raw,format=S16LE,rate=16000,channels=1",
            "!",
            "stsbridge",
            &format!("url={}", srv.url()),
            &format!("api-key={KEY}"),
            "!",
            "fakesink",
        ])
        .output()
        .expect("run gst-launch-1.0");
    assert!(
        launch.status.success(),
        "{}",
        String::from_utf8_lossy(&launch.stderr)
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&launch.stdout),
        String::from_utf8_lossy(&launch.stderr)
    );
    assert!(text.contains("stsbridge0"));
    // gst-launch's own parser logs the launch line; our element and gst-launch's output must
    // not repeat it anywhere else.
    let leaks: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(KEY) && !l.contains("GST_PIPELINE") && !l.contains("parse"))
        .collect();
    assert!(
        leaks.is_empty(),
        "API key printed by gst-launch -v: {leaks:#?}"
    );

    let inspect = std::process::Command::new("gst-inspect-1.0")
        .env("GST_PLUGIN_PATH", &dir)
        .arg("stsbridge")
        .output()
        .expect("run gst-inspect-1.0");
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(text.contains("api-key"));
    assert!(text.contains("Write only"));
}
