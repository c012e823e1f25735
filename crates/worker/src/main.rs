//! `dubbing-worker`: dubs one live stream (see the crate docs and `dubbing-worker --help`).

use clap::Parser;
use dubbing_worker::settings::{Args, resolve};
use dubbing_worker::supervisor::WorkerError;

fn main() {
    let args = Args::parse();
    dubbing_worker::log::init_logging(args.log_json);
    let settings = match resolve(&args) {
        Ok(s) => s,
        Err(e) => {
            let e = WorkerError::Settings(e);
            tracing::error!("bad settings: {e}");
            eprintln!("dubbing-worker: {e}");
            std::process::exit(e.exit_code());
        }
    };
    raise_descriptor_limit();
    std::process::exit(dubbing_worker::run(&settings));
}

/// Raises the soft limit of open descriptors to the hard limit (GLib aborts the process when
/// it cannot create the pipes of a new element's wakeup).
fn raise_descriptor_limit() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}
