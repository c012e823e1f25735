//! `sts-server`: the reference STS server as a program (see `docs/sts-api.md`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use clap::Parser;
use dubbing_sts_server::{Faults, Mode, ServerConfig, StsServer};

/// Reference speech-to-speech translation server: echo, tone or silence, with fault injection.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// What successful answers carry.
    #[arg(long, value_enum, default_value_t = Mode::Echo)]
    mode: Mode,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    host: IpAddr,
    /// Require `Authorization: Bearer <KEY>` on process and admin requests.
    #[arg(long, env = "STS_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    #[command(flatten)]
    faults: Faults,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = args.faults.validate() {
        eprintln!("sts-server: {e}");
        return ExitCode::from(2);
    }
    let config = ServerConfig {
        mode: args.mode,
        bind: SocketAddr::new(args.host, args.port),
        api_key: args.api_key.filter(|k| !k.is_empty()),
        faults: args.faults,
    };
    let api_key_set = config.api_key.is_some();
    let server = match StsServer::start(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "sts-server: cannot listen on {}:{}: {e}",
                args.host, args.port
            );
            return ExitCode::FAILURE;
        }
    };
    println!("listening on {}", server.base_url());
    tracing::info!(
        mode = server.mode().as_str(),
        api_key = if api_key_set { "required" } else { "none" },
        faults = ?server.faults(),
        "process endpoint at {}",
        server.url()
    );
    if let Err(e) = wait_for_signal() {
        eprintln!("sts-server: cannot wait for signals: {e}");
    }
    tracing::info!("stopping");
    server.stop();
    ExitCode::SUCCESS
}

/// Blocks until SIGINT or SIGTERM.
fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        Ok(())
    })
}
