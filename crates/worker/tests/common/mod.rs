//! Shared helpers of the worker's integration tests (the live-test harness is `live.rs`).

#![allow(dead_code)]

use std::path::PathBuf;

/// GStreamer initialized and the dubbing elements registered, as the worker does it.
pub fn init() {
    dubbing_worker::init().expect("initialize GStreamer and the dubbing plugin");
}

/// The `dubbing-worker` binary cargo built for these tests; `DUBBING_WORKER_BIN` overrides it
/// (scripts/test.sh runs the CLI tests against the `cargo install`ed one).
pub fn worker_binary() -> PathBuf {
    match std::env::var_os("DUBBING_WORKER_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_BIN_EXE_dubbing-worker")),
    }
}
