//! `dubbing-worker`: dubs one live stream (see the crate docs and `dubbing-worker --help`).

use clap::Parser;
use dubbing_worker::settings::{Args, resolve};

fn main() {
    let args = Args::parse();
    dubbing_worker::log::init_logging(args.log_json);
    let settings = match resolve(&args) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("bad settings: {e}");
            eprintln!("dubbing-worker: {e}");
            std::process::exit(2);
        }
    };
    std::process::exit(dubbing_worker::run(&settings));
}
