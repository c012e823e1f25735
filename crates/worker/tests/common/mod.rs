//! Shared helpers of the worker's integration tests (the live-test harness is `live.rs`).

#![allow(dead_code)]

/// GStreamer initialized and the dubbing elements registered, as the worker does it.
pub fn init() {
    dubbing_worker::init().expect("initialize GStreamer and the dubbing plugin");
}
