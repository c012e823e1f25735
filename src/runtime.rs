//! The plugin's one tokio runtime, shared by every element instance that talks to the network.

use std::sync::LazyLock;

/// Two worker threads: the work is I/O-bound (HTTP requests, base64 and JSON of one fragment
/// at a time), and a dubbing host runs many pipelines in one process.
pub static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .thread_name("gst-dubbing-rt")
        .build()
        .expect("cannot start the tokio runtime")
});
