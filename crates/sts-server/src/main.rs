//! `sts-server`: the reference STS server as a program (see `docs/sts-api.md`).

use std::io::IsTerminal as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use clap::Parser;
use std::time::Duration;

use dubbing_sts_server::speech::{AsrEngine, TtsEngine};
use dubbing_sts_server::{Faults, Limits, Mode, ServerConfig, StsServer, TranslateConfig};

/// Reference speech-to-speech translation server: echo, tone, silence or a real offline
/// translation (Whisper or pocketsphinx → apertium → espeak-ng or Pico), with fault injection.
#[derive(Parser)]
#[command(version, after_help = AFTER_HELP)]
struct Args {
    /// What successful answers carry.
    #[arg(long, value_enum, default_value_t = Mode::Echo)]
    mode: Mode,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Address to listen on (0.0.0.0 for every interface).
    #[arg(long, visible_alias = "host", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    bind: IpAddr,
    /// Require `Authorization: Bearer <KEY>` on process and admin requests (an empty key
    /// requires none). Prefer the environment variable: command lines are visible to others.
    #[arg(long, env = "STS_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Serve the admin endpoints (/admin/faults: fault injection, /admin/stats). On an
    /// address other than loopback they need an API key (the server refuses to start).
    #[arg(long)]
    admin: bool,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    translate: TranslateArgs,
    #[command(flatten)]
    faults: Faults,
}

#[derive(clap::Args)]
#[command(next_help_heading = "Limits (every client is untrusted)")]
struct LimitArgs {
    /// Largest process request body, bytes; larger is answered 413 before it is read.
    #[arg(long, default_value_t = Limits::default().max_body_bytes)]
    max_body_bytes: usize,
    /// Longest fragment (its audio), milliseconds; longer is answered 400 INVALID_INPUT.
    #[arg(long, default_value_t = Limits::default().max_fragment.as_millis() as u64)]
    max_fragment_ms: u64,
    /// Longest time to receive a request's headers (and idle time of a kept-alive
    /// connection), milliseconds; the connection is closed past it.
    #[arg(long, default_value_t = Limits::default().header_timeout.as_millis() as u64)]
    header_timeout_ms: u64,
    /// Longest time to receive a request's body, milliseconds; 408 past it.
    #[arg(long, default_value_t = Limits::default().body_timeout.as_millis() as u64)]
    body_timeout_ms: u64,
    /// Most connections open at once; past it a new one closes the oldest that has not
    /// delivered a whole request yet, or waits in the listen backlog.
    #[arg(long, default_value_t = Limits::default().max_connections)]
    max_connections: usize,
}

impl LimitArgs {
    fn limits(&self) -> Limits {
        Limits {
            max_body_bytes: self.max_body_bytes,
            max_fragment: Duration::from_millis(self.max_fragment_ms),
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            body_timeout: Duration::from_millis(self.body_timeout_ms),
            max_connections: self.max_connections,
        }
    }
}

#[derive(clap::Args)]
#[command(next_help_heading = "Translate mode")]
struct TranslateArgs {
    /// Worker threads for recognition, translation and synthesis [default: number of cores].
    #[arg(long)]
    workers: Option<usize>,
    /// Fragments that may wait for a worker; more are answered 503 QUEUE_FULL.
    #[arg(long, default_value_t = 16)]
    queue_size: usize,
    /// Fragments of one stream that may wait for a worker (at most --queue-size); more are
    /// answered 503 QUEUE_FULL, so one stream cannot fill the queue.
    #[arg(long, default_value_t = 4)]
    stream_queue_size: usize,
    /// Streams whose recogniser state is kept (least recently used evicted past it).
    #[arg(long, default_value_t = 64)]
    max_streams: usize,
    /// Evict a stream's recogniser state after this many seconds without a request.
    #[arg(long, default_value_t = 60.0)]
    stream_idle_s: f64,
    /// Longest wait of a fragment for its stream's earlier fragments, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    order_wait_ms: u64,
    /// Speech recogniser. Whisper runs in a helper process (faster-whisper, installed by
    /// scripts/install-deps.sh in /opt/gst-dubbing/whisper or $DUBBING_WHISPER_HOME).
    #[arg(long, value_enum, default_value_t = AsrEngine::WhisperBase)]
    asr: AsrEngine,
    /// Voice. pico (SVOX Pico, Debian non-free) is clearer; install it with
    /// scripts/install-deps.sh --with-pico. Languages Pico lacks are spoken by espeak-ng.
    #[arg(long, value_enum, default_value_t = TtsEngine::EspeakNg)]
    tts: TtsEngine,
}

impl TranslateArgs {
    fn config(&self) -> Result<TranslateConfig, String> {
        if !(self.stream_idle_s.is_finite() && self.stream_idle_s > 0.0) {
            return Err(format!(
                "--stream-idle-s must be > 0, not {}",
                self.stream_idle_s
            ));
        }
        let defaults = TranslateConfig::default();
        let config = TranslateConfig {
            workers: self.workers.unwrap_or(defaults.workers),
            queue_size: self.queue_size,
            stream_queue_size: self.stream_queue_size,
            max_streams: self.max_streams,
            stream_idle: Duration::from_secs_f64(self.stream_idle_s.min(1e9)),
            order_wait: Duration::from_millis(self.order_wait_ms),
            asr: self.asr,
            tts: self.tts,
        };
        config.validate()?;
        Ok(config)
    }
}

const AFTER_HELP: &str = "\
Endpoints:
  POST /api/v1/sts/process   the STS contract (docs/sts-api.md)
  GET  /health               {\"status\":\"ok\",\"mode\":...}, never needs the key
  GET  /admin/stats          request counters                                    (--admin)
  GET  /admin/faults         the global faults                                   (--admin)
  PUT  /admin/faults         replace the global faults (JSON, same names as the  (--admin)
                             flags, with _)

Examples:
  sts-server --mode echo --port 8000
  sts-server --mode translate --port 8000 --workers 2 --queue-size 16
  sts-server --mode translate --asr whisper-tiny-en --tts pico
  STS_API_KEY=secret sts-server --mode tone --delay-ms 300 --jitter-ms 200
  sts-server --status 503 --retry-after-s 2 --error-rate 0.3
  sts-server --admin &
  curl -X PUT -d '{\"malformed_json\":true}' http://127.0.0.1:8000/admin/faults

Logging: RUST_LOG (default info), to stderr.";

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    if let Err(e) = args.faults.validate() {
        eprintln!("sts-server: {e}");
        return ExitCode::from(2);
    }
    let translate = match args.translate.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sts-server: {e}");
            return ExitCode::from(2);
        }
    };
    let config = ServerConfig {
        mode: args.mode,
        bind: SocketAddr::new(args.bind, args.port),
        api_key: args.api_key.filter(|k| !k.is_empty()),
        admin: args.admin,
        limits: args.limits.limits(),
        faults: args.faults,
        translate,
    };
    if let Err(e) = config.validate() {
        eprintln!("sts-server: {e}");
        return ExitCode::from(2);
    }
    let api_key_set = config.api_key.is_some();
    let admin = config.admin;
    if config.mode == Mode::Translate {
        tracing::info!("loading the speech engines");
    }
    let server = match StsServer::start(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sts-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("listening on {}", server.base_url());
    let pairs: Vec<String> = server
        .language_pairs()
        .iter()
        .map(|p| format!("{}→{}", p.source, p.target))
        .collect();
    tracing::info!(
        mode = server.mode().as_str(),
        language_pairs = ?pairs,
        api_key = if api_key_set { "required" } else { "none" },
        admin = if admin { "on" } else { "off" },
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
