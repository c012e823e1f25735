//! The worker's settings: command line and environment (clap), checked and resolved into what
//! [`crate::run`] needs. Bad settings are a clear message naming the setting (exit code 2).

use std::net::{IpAddr, SocketAddr};

use clap::Parser;

use gstdubbing::{avoffset, dubchunker, stsbridge};

use crate::pipeline::{Boundary, Chain, LiveUrls, validate_stream_id};

const MS: u64 = 1_000_000;

/// The API key is read from the environment or a file only (never a flag: command lines are
/// visible).
pub const API_KEY_ENV: &str = "WORKER_STS_API_KEY";
/// A file holding the API key (Docker/Kubernetes secrets), instead of [`API_KEY_ENV`].
pub const API_KEY_FILE_ENV: &str = "WORKER_STS_API_KEY_FILE";

/// The STS API key; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "dubbing-worker",
    version,
    about = "Dubs one live stream: RTSP/RTMP in, STS, RTMP or SRT out, /metrics",
    after_help = AFTER_HELP
)]
pub struct Args {
    /// Stream id: letters, digits, '_' and '-'. Used in the default URLs and metric labels.
    #[arg(long, env = "WORKER_STREAM_ID")]
    pub stream_id: String,
    /// Input URL (rtsp:// or rtmp://). Default: rtsp://HOST:RTSP_PORT/live/<id>/in.
    #[arg(long)]
    pub input: Option<String>,
    /// Output URL (rtmp://). Default: rtmp://HOST:RTMP_PORT/live/<id>/out.
    #[arg(long)]
    pub output: Option<String>,
    /// Host of the default input and output URLs.
    #[arg(long, env = "MEDIAMTX_HOST", default_value = "localhost")]
    pub mediamtx_host: String,
    /// RTSP port of the default input URL.
    #[arg(long, env = "MEDIAMTX_RTSP_PORT", default_value_t = 8554)]
    pub mediamtx_rtsp_port: u16,
    /// RTMP port of the default output URL.
    #[arg(long, env = "MEDIAMTX_RTMP_PORT", default_value_t = 1935)]
    pub mediamtx_rtmp_port: u16,
    /// SRT port of the default output URL with --output-protocol srt (MediaMTX's SRT
    /// listener).
    #[arg(long, env = "MEDIAMTX_SRT_PORT", default_value_t = 8890)]
    pub mediamtx_srt_port: u16,
    /// How the dub goes out: `rtmp` (FLV, one publication per language) or `srt` (one
    /// MPEG-TS publication with every language as its own tagged AAC track, default URL
    /// `srt://HOST:SRT_PORT?streamid=publish:live/<id>/out`).
    #[arg(long, env = "WORKER_OUTPUT", default_value = "rtmp", value_parser = ["rtmp", "srt"])]
    pub output_protocol: String,
    /// With --output-protocol srt: the original audio as a track of its own (tagged with
    /// the source language), after the dubbed ones.
    #[arg(long, env = "WORKER_OUTPUT_ORIGINAL", default_value = "false", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub output_original: bool,
    /// Captions of the dubbed language inside the video: `off` or `cea608` (CEA-608 in the
    /// H.264, what YouTube, Twitch and TV players show; each RTMP publication its own
    /// language's on CC1; one SRT publication the first language's on CC1, the second's on
    /// CC3).
    #[arg(long, env = "WORKER_CAPTIONS", default_value = "off", value_parser = ["off", "cea608"])]
    pub captions: String,
    /// STS endpoint, e.g. http://sts:8000/api/v1/sts/process.
    #[arg(long, env = "WORKER_STS_SERVICE_URL", hide_env_values = true)]
    pub sts_url: Option<String>,
    /// `dub` (default) or `passthrough` (no STS: original audio, still through the elements).
    #[arg(long, default_value = "dub")]
    pub sts_mode: String,
    /// How fragments travel to the STS: `http` (one POST per fragment) or `socketio` (one
    /// Socket.IO session per stream at the server's base URL, as the seeds' STS services speak).
    #[arg(long, env = "WORKER_STS_PROTOCOL", default_value = "http")]
    pub sts_protocol: String,
    /// Per-attempt STS timeout, ms.
    #[arg(long, env = "WORKER_STS_TIMEOUT_MS", default_value_t = stsbridge::DEFAULT_TIMEOUT / MS)]
    pub sts_timeout_ms: u64,
    /// Retries of a failed STS request.
    #[arg(long, env = "WORKER_STS_MAX_RETRIES", default_value_t = stsbridge::DEFAULT_MAX_RETRIES)]
    pub sts_max_retries: u32,
    /// Fragment duration, ms.
    #[arg(long, env = "WORKER_FRAGMENT_TARGET_DUR", default_value_t = dubchunker::DEFAULT_CHUNK_DURATION / MS)]
    pub fragment_target_dur: u64,
    /// A/V offset, ns.
    #[arg(long, env = "WORKER_AV_OFFSET_NS", default_value_t = avoffset::DEFAULT_OFFSET)]
    pub av_offset_ns: u64,
    /// Language spoken in the input.
    #[arg(long, env = "WORKER_SOURCE_LANGUAGE", default_value = "en")]
    pub source_language: String,
    /// Language of the dub (one language; see --languages for several).
    #[arg(long, env = "WORKER_TARGET_LANGUAGE", default_value = "es")]
    pub target_language: String,
    /// Several dubbed languages, comma-separated (e.g. es,de): one STS bridge and one RTMP
    /// publication per language, at <output>/<lang>. Overrides --target-language.
    #[arg(
        long = "languages",
        env = "WORKER_TARGET_LANGUAGES",
        value_delimiter = ','
    )]
    pub target_languages: Option<Vec<String>>,
    /// Where fragments are cut: `silence` (in the quietest 20 ms between --boundary-min-ms
    /// and --boundary-max-ms, so words stay whole) or `fixed` (every
    /// WORKER_FRAGMENT_TARGET_DUR).
    #[arg(long, env = "WORKER_BOUNDARY", default_value = "silence", value_parser = ["silence", "fixed"])]
    pub boundary: String,
    /// Shortest fragment with --boundary silence, ms.
    #[arg(long, env = "WORKER_BOUNDARY_MIN_MS", default_value_t = dubchunker::DEFAULT_MIN_DURATION / MS)]
    pub boundary_min_ms: u64,
    /// Longest fragment with --boundary silence, ms.
    #[arg(long, env = "WORKER_BOUNDARY_MAX_MS", default_value_t = dubchunker::DEFAULT_MAX_DURATION / MS)]
    pub boundary_max_ms: u64,
    /// Port of GET /metrics (0: any free port, printed at startup).
    #[arg(long, env = "WORKER_METRICS_PORT", default_value_t = 8000)]
    pub metrics_port: u16,
    /// No input data for this long is a source outage (logged, /health 503), never an end of
    /// stream, ms.
    #[arg(long, env = "WORKER_SOURCE_TIMEOUT_MS", default_value_t = 5000)]
    pub source_timeout_ms: u64,
    /// A source outage longer than this ends the run (exit 1), ms.
    #[arg(long, env = "WORKER_SOURCE_GRACE_MS", default_value_t = 30000)]
    pub source_grace_ms: u64,
    /// An output that accepts nothing for this long is an output outage (reconnected), ms.
    #[arg(long, env = "WORKER_OUTPUT_TIMEOUT_MS", default_value_t = 5000)]
    pub output_timeout_ms: u64,
    /// An output down for longer than this, reconnection attempts included, ends the run
    /// (exit 1), ms.
    #[arg(long, env = "WORKER_OUTPUT_GRACE_MS", default_value_t = 30000)]
    pub output_grace_ms: u64,
    /// Address /metrics binds to (0.0.0.0 in containers).
    #[arg(long, env = "WORKER_METRICS_BIND", default_value = "127.0.0.1")]
    pub metrics_bind: IpAddr,
    /// Prometheus file-based discovery: the worker writes <dir>/<stream id>.json with its
    /// metrics address (any free port with WORKER_METRICS_PORT=0, so that workers cannot
    /// clash) and removes it when it exits.
    #[arg(long, env = "WORKER_METRICS_SD_DIR")]
    pub metrics_sd_dir: Option<std::path::PathBuf>,
    /// The host Prometheus reaches the worker at, in the discovery file (default: the bind
    /// address, or this machine's host name when bound to all addresses).
    #[arg(long, env = "WORKER_METRICS_SD_HOST")]
    pub metrics_sd_host: Option<String>,
    /// Log JSON lines instead of text.
    #[arg(long)]
    pub log_json: bool,
}

const AFTER_HELP: &str = "\
The STS API key comes from WORKER_STS_API_KEY or the file named by WORKER_STS_API_KEY_FILE
(never a flag: command lines are visible). URLs, keys and stream keys never reach the logs,
GStreamer's debug log included.
Logging: RUST_LOG (default info), to stderr.
Exit codes: 0 end of stream or SIGINT/SIGTERM (EOS first), 1 pipeline error or outage (no input
data for WORKER_SOURCE_GRACE_MS, no output taken for WORKER_OUTPUT_TIMEOUT_MS), 2 bad settings.";

/// Settings checked and resolved; exit code 2 on any problem.
#[derive(Debug, Clone)]
pub struct Settings {
    pub stream_id: String,
    /// Input, and one output per language of `chain.target_languages`.
    pub urls: LiveUrls,
    /// `chain.offset_ns` is the offset used: the requested one, raised to what the chain can
    /// deliver ([`Chain::min_offset_ns`]) if below.
    pub chain: Chain,
    /// `WORKER_AV_OFFSET_NS` as given.
    pub requested_offset_ns: u64,
    pub api_key: Option<ApiKey>,
    /// Watchdogs: no input data / no output accepted for this long ends the run (exit 1).
    pub source_timeout: std::time::Duration,
    pub source_grace: std::time::Duration,
    pub output_timeout: std::time::Duration,
    pub output_grace: std::time::Duration,
    /// Where GET /metrics listens.
    pub metrics_addr: SocketAddr,
    /// Prometheus file-based discovery: the directory and the host written there.
    pub metrics_sd: Option<(std::path::PathBuf, String)>,
}

/// Checks `args` and builds the settings of one run; the error names the bad setting.
pub fn resolve(args: &Args) -> Result<Settings, String> {
    validate_stream_id(&args.stream_id)?;
    let id = &args.stream_id;
    let input = args.input.clone().unwrap_or_else(|| {
        format!(
            "rtsp://{}:{}/live/{id}/in",
            args.mediamtx_host, args.mediamtx_rtsp_port
        )
    });
    let srt = args.output_protocol == "srt";
    let output = args.output.clone().unwrap_or_else(|| {
        if srt {
            format!(
                "srt://{}:{}?streamid=publish:live/{id}/out",
                args.mediamtx_host, args.mediamtx_srt_port
            )
        } else {
            format!(
                "rtmp://{}:{}/live/{id}/out",
                args.mediamtx_host, args.mediamtx_rtmp_port
            )
        }
    });
    if srt != output.starts_with("srt://") {
        return Err(format!(
            "--output {} does not go with WORKER_OUTPUT={} (rtmp:// for rtmp, srt:// for srt)",
            crate::pipeline::LiveUrls::display_output(&output),
            args.output_protocol
        ));
    }
    if args.output_original && !srt {
        return Err(
            "WORKER_OUTPUT_ORIGINAL: the original as a track of its own needs WORKER_OUTPUT=srt (FLV carries one audio track)"
                .into(),
        );
    }
    let languages = match &args.target_languages {
        Some(l) => l.iter().map(|s| s.trim().to_string()).collect::<Vec<_>>(),
        None => vec![args.target_language.clone()],
    };
    for (i, l) in languages.iter().enumerate() {
        if !(2..=8).contains(&l.len()) || !l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(format!(
                "WORKER_TARGET_LANGUAGES: {l:?} is not a language code (2-8 letters, digits or '-')"
            ));
        }
        if languages[..i].contains(l) {
            return Err(format!("WORKER_TARGET_LANGUAGES: {l:?} is given twice"));
        }
    }
    if srt {
        // MPEG-TS tags each track with an ISO 639 code.
        for l in &languages {
            gstdubbing::tsoutput::ts_language(l)
                .map_err(|e| format!("WORKER_TARGET_LANGUAGES: {e}"))?;
        }
        if args.output_original {
            gstdubbing::tsoutput::ts_language(&args.source_language)
                .map_err(|e| format!("WORKER_SOURCE_LANGUAGE: {e}"))?;
        }
    }
    // One language publishes at the output; several at <output>/<lang> (RTMP), or all in one
    // (SRT).
    let outputs = if languages.len() == 1 || srt {
        vec![output]
    } else {
        languages
            .iter()
            .map(|l| per_language_url(&output, l))
            .collect::<Result<Vec<_>, _>>()?
    };
    let urls = LiveUrls::new(&input, outputs)?;
    let url = match args.sts_mode.as_str() {
        "passthrough" => String::new(),
        "dub" => {
            let u = args.sts_url.clone().ok_or(
                "no STS URL: set WORKER_STS_SERVICE_URL or --sts-url (or --sts-mode passthrough)",
            )?;
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(format!(
                    "STS URL {:?} is not an http(s):// URL",
                    crate::log::redact_url(&u)
                ));
            }
            u
        }
        m => return Err(format!("--sts-mode {m:?}: use dub or passthrough")),
    };
    // Every setting within what its element accepts (gst-inspect-1.0's ranges): a value
    // outside would be refused by the element with a GLib warning and its default used.
    let fragment_ns = ms_within(
        "WORKER_FRAGMENT_TARGET_DUR",
        args.fragment_target_dur,
        dubchunker::MIN_FRAGMENT..=dubchunker::MAX_FRAGMENT,
        "dubchunker chunk-duration",
    )?;
    let timeout_ns = ms_within(
        "WORKER_STS_TIMEOUT_MS",
        args.sts_timeout_ms,
        stsbridge::MIN_TIMEOUT..=stsbridge::MAX_TIMEOUT,
        "stsbridge timeout",
    )?;
    if args.sts_max_retries > stsbridge::MAX_MAX_RETRIES {
        return Err(format!(
            "WORKER_STS_MAX_RETRIES {} is above {} (stsbridge max-retries)",
            args.sts_max_retries,
            stsbridge::MAX_MAX_RETRIES
        ));
    }
    if args.av_offset_ns > avoffset::MAX_OFFSET {
        return Err(format!(
            "WORKER_AV_OFFSET_NS {} ({} s) is above {} ({} s, avoffset offset); it is in nanoseconds",
            args.av_offset_ns,
            args.av_offset_ns / 1_000_000_000,
            avoffset::MAX_OFFSET,
            avoffset::MAX_OFFSET / 1_000_000_000
        ));
    }
    for (name, ms) in [
        ("WORKER_SOURCE_TIMEOUT_MS", args.source_timeout_ms),
        ("WORKER_SOURCE_GRACE_MS", args.source_grace_ms),
        ("WORKER_OUTPUT_TIMEOUT_MS", args.output_timeout_ms),
        ("WORKER_OUTPUT_GRACE_MS", args.output_grace_ms),
    ] {
        if !(500..=3_600_000).contains(&ms) {
            return Err(format!("{name} {ms} is outside 500..3600000"));
        }
    }
    if args.source_grace_ms < args.source_timeout_ms {
        return Err(format!(
            "WORKER_SOURCE_GRACE_MS {} is below WORKER_SOURCE_TIMEOUT_MS {}",
            args.source_grace_ms, args.source_timeout_ms
        ));
    }
    if !matches!(args.sts_protocol.as_str(), "http" | "socketio") {
        return Err(format!(
            "WORKER_STS_PROTOCOL {:?}: use http or socketio",
            args.sts_protocol
        ));
    }
    let boundary = match args.boundary.as_str() {
        "fixed" => Boundary::Fixed,
        _ => {
            let range = dubchunker::MIN_FRAGMENT..=dubchunker::MAX_FRAGMENT;
            let min_ns = ms_within(
                "WORKER_BOUNDARY_MIN_MS",
                args.boundary_min_ms,
                range.clone(),
                "dubchunker min-duration",
            )?;
            let max_ns = ms_within(
                "WORKER_BOUNDARY_MAX_MS",
                args.boundary_max_ms,
                range,
                "dubchunker max-duration",
            )?;
            if min_ns >= max_ns {
                return Err(format!(
                    "WORKER_BOUNDARY_MIN_MS {} must be below WORKER_BOUNDARY_MAX_MS {}",
                    args.boundary_min_ms, args.boundary_max_ms
                ));
            }
            Boundary::Silence { min_ns, max_ns }
        }
    };
    let chain = Chain {
        url,
        stream_id: id.clone(),
        source_language: args.source_language.clone(),
        target_languages: languages,
        chunk_duration_ns: fragment_ns,
        timeout_ns,
        max_retries: args.sts_max_retries,
        protocol: args.sts_protocol.clone(),
        offset_ns: args.av_offset_ns,
        boundary,
        captions: args.captions == "cea608",
        original_track: args.output_original,
        ..Default::default()
    }
    .with_deliverable_offset();
    if chain.sts_latency_ns() > stsbridge::MAX_LATENCY {
        return Err(format!(
            "WORKER_AV_OFFSET_NS {} leaves the STS {} ms (stsbridge latency), above its {} ms maximum",
            args.av_offset_ns,
            chain.sts_latency_ns() / MS,
            stsbridge::MAX_LATENCY / MS
        ));
    }
    Ok(Settings {
        stream_id: id.clone(),
        urls,
        chain,
        requested_offset_ns: args.av_offset_ns,
        api_key: read_api_key(
            std::env::var(API_KEY_ENV).ok(),
            std::env::var(API_KEY_FILE_ENV).ok(),
        )?,
        source_timeout: std::time::Duration::from_millis(args.source_timeout_ms),
        source_grace: std::time::Duration::from_millis(args.source_grace_ms),
        output_timeout: std::time::Duration::from_millis(args.output_timeout_ms),
        output_grace: std::time::Duration::from_millis(args.output_grace_ms),
        metrics_addr: SocketAddr::new(args.metrics_bind, args.metrics_port),
        metrics_sd: match &args.metrics_sd_dir {
            None => None,
            Some(dir) if !dir.is_dir() => {
                return Err(format!(
                    "WORKER_METRICS_SD_DIR {}: not a directory",
                    dir.display()
                ));
            }
            Some(dir) => Some((
                dir.clone(),
                args.metrics_sd_host.clone().unwrap_or_else(|| {
                    if args.metrics_bind.is_unspecified() {
                        host_name()
                    } else {
                        args.metrics_bind.to_string()
                    }
                }),
            )),
        },
    })
}

/// This machine's host name (what other containers of a compose project reach it by).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// `output` with `/<lang>` appended to its path.
fn per_language_url(output: &str, lang: &str) -> Result<String, String> {
    let mut u = url::Url::parse(output).map_err(|e| {
        format!(
            "output {:?} is not a URL: {e}",
            crate::log::redact_url(output)
        )
    })?;
    let path = format!("{}/{lang}", u.path().trim_end_matches('/'));
    u.set_path(&path);
    Ok(u.to_string())
}

/// The API key: the variable, else the file's content; both set is an error. One rule for
/// both: surrounding whitespace (a trailing newline) is trimmed, and what is left must be a
/// valid HTTP header value of visible characters (no space, tab, newline or control
/// character: such a key cannot be sent, and every fragment would fall back).
fn read_api_key(var: Option<String>, file: Option<String>) -> Result<Option<ApiKey>, String> {
    let (key, from) = match (
        var.filter(|v| !v.is_empty()),
        file.filter(|f| !f.is_empty()),
    ) {
        (Some(_), Some(_)) => {
            return Err(format!("set {API_KEY_ENV} or {API_KEY_FILE_ENV}, not both"));
        }
        (Some(v), None) => (v, API_KEY_ENV.to_string()),
        (None, Some(path)) => (
            std::fs::read_to_string(&path)
                .map_err(|e| format!("{API_KEY_FILE_ENV}: cannot read {path}: {e}"))?,
            format!("{API_KEY_FILE_ENV} ({path})"),
        ),
        (None, None) => return Ok(None),
    };
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("{from}: the key is empty"));
    }
    // Never echo the key: say where and what.
    if let Some((at, c)) = key.char_indices().find(|(_, c)| !c.is_ascii_graphic()) {
        return Err(format!(
            "{from}: the key has {} at character {} (only visible ASCII characters can be sent in a header)",
            match c {
                '\n' | '\r' => "a line break".to_string(),
                ' ' => "a space".to_string(),
                '\t' => "a tab".to_string(),
                c if c.is_control() => format!("control character U+{:04X}", c as u32),
                _ => "a non-ASCII character".to_string(),
            },
            at + 1
        ));
    }
    Ok(Some(ApiKey(key.to_string())))
}

/// `ms` milliseconds as nanoseconds, within `range` (ns; what `property` accepts), or an
/// error naming `name`.
fn ms_within(
    name: &str,
    ms: u64,
    range: std::ops::RangeInclusive<u64>,
    property: &str,
) -> Result<u64, String> {
    ms.checked_mul(MS)
        .filter(|ns| range.contains(ns))
        .ok_or_else(|| {
            format!(
                "{name} {ms} ms is outside {}..={} ms ({property})",
                range.start() / MS,
                range.end() / MS
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::LiveInput;

    /// Parses a command line without reading the environment of the test process.
    fn args(cmdline: &[&str]) -> Args {
        let mut a =
            Args::try_parse_from(std::iter::once("dubbing-worker").chain(cmdline.iter().copied()))
                .unwrap();
        // clap reads WORKER_*/MEDIAMTX_* from the environment; pin what the tests rely on.
        a.mediamtx_host = "mtx".into();
        a.mediamtx_rtsp_port = 8554;
        a.mediamtx_rtmp_port = 1935;
        a.mediamtx_srt_port = 8890;
        a.output_protocol = "rtmp".into();
        a.output_original = false;
        a.captions = "off".into();
        a.target_languages = None;
        a.target_language = "es".into();
        a.boundary = "silence".into();
        a.boundary_min_ms = 500;
        a.boundary_max_ms = 1500;
        a.sts_protocol = "http".into();
        a
    }

    #[test]
    fn default_urls_come_from_the_stream_id_and_mediamtx() {
        let mut a = args(&["--stream-id", "match_7", "--sts-mode", "passthrough"]);
        a.metrics_port = 9100;
        let s = resolve(&a).unwrap();
        assert_eq!(
            s.urls.input,
            LiveInput::Rtsp("rtsp://mtx:8554/live/match_7/in".into())
        );
        assert_eq!(s.urls.outputs, vec!["rtmp://mtx:1935/live/match_7/out"]);
        assert_eq!(
            s.chain.boundary,
            Boundary::Silence {
                min_ns: 500_000_000,
                max_ns: 1_500_000_000
            },
            "the default cuts in pauses"
        );
        assert_eq!(s.chain.url, "", "passthrough sends no request");
        assert_eq!(s.chain.stream_id, "match_7");
        assert_eq!(s.metrics_addr.port(), 9100);
    }

    #[test]
    fn durations_are_converted_to_nanoseconds() {
        let mut a = args(&["--stream-id", "t", "--sts-url", "https://sts/p"]);
        a.fragment_target_dur = 500;
        a.sts_timeout_ms = 2500;
        a.av_offset_ns = 4_000_000_000;
        a.target_language = "de".into();
        let s = resolve(&a).unwrap();
        assert_eq!(s.chain.url, "https://sts/p");
        assert_eq!(s.chain.protocol, "http");
        assert_eq!(s.chain.chunk_duration_ns, 500_000_000);
        assert_eq!(s.chain.timeout_ns, 2_500_000_000);
        assert_eq!(s.chain.offset_ns, 4_000_000_000);
        // Below what the chain delivers: raised to its floor, the request kept.
        a.av_offset_ns = 1_000_000_000;
        let s = resolve(&a).unwrap();
        assert_eq!(s.requested_offset_ns, 1_000_000_000);
        assert_eq!(s.chain.offset_ns, s.chain.min_offset_ns());
        assert_eq!(s.chain.target_languages, vec!["de".to_string()]);
        a.boundary = "fixed".into();
        assert_eq!(resolve(&a).unwrap().chain.boundary, Boundary::Fixed);
    }

    #[test]
    fn several_languages_publish_one_output_each() {
        let mut a = args(&["--stream-id", "m1", "--sts-mode", "passthrough"]);
        a.target_languages = Some(vec!["es".into(), " de".into()]);
        let s = resolve(&a).unwrap();
        assert_eq!(s.chain.target_languages, vec!["es", "de"]);
        assert_eq!(
            s.urls.outputs,
            vec![
                "rtmp://mtx:1935/live/m1/out/es",
                "rtmp://mtx:1935/live/m1/out/de"
            ]
        );
        a.output = Some("rtmp://h/app/key?x=1".into());
        assert_eq!(
            resolve(&a).unwrap().urls.outputs[1],
            "rtmp://h/app/key/de?x=1"
        );
        a.target_languages = Some(vec!["es".into(), "es".into()]);
        assert!(resolve(&a).unwrap_err().contains("twice"));
        a.target_languages = Some(vec!["e s".into()]);
        assert!(resolve(&a).unwrap_err().contains("not a language code"));
    }

    #[test]
    fn srt_publishes_every_language_in_one_output() {
        let mut a = args(&["--stream-id", "m1", "--sts-mode", "passthrough"]);
        a.target_languages = Some(vec!["es".into(), "de".into()]);
        a.output_protocol = "srt".into();
        a.output_original = true;
        let s = resolve(&a).unwrap();
        assert_eq!(
            s.urls.outputs,
            vec!["srt://mtx:8890?streamid=publish:live/m1/out"]
        );
        assert!(s.urls.is_srt());
        assert!(s.chain.original_track);
        a.output = Some("srt://h:9000?streamid=publish:x:u:p4ss".into());
        assert_eq!(
            resolve(&a).unwrap().urls.outputs[0],
            "srt://h:9000?streamid=publish:x:u:p4ss"
        );
        a.output = Some("rtmp://h/app/key".into());
        assert!(
            resolve(&a)
                .unwrap_err()
                .contains("does not go with WORKER_OUTPUT=srt")
        );
        a.output = None;
        a.target_languages = Some(vec!["es".into(), "x-klingon".into()]);
        assert!(resolve(&a).unwrap_err().contains("x-klingon"));
        let mut a = args(&["--stream-id", "m1", "--sts-mode", "passthrough"]);
        a.output_original = true;
        assert!(resolve(&a).unwrap_err().contains("WORKER_OUTPUT=srt"));
    }

    #[test]
    fn captions_take_their_latency_out_of_the_shift() {
        let mut a = args(&["--stream-id", "t", "--sts-mode", "passthrough"]);
        a.captions = "cea608".into();
        let s = resolve(&a).unwrap();
        assert!(s.chain.captions);
        // 6 s: the STS gets 6 − 1.5 (fragment) − 0.7 (source, encoder, muxer) − 1.5
        // (captions) = 2.3 s; the muxers wait 200 ms and the caption inserter 1.5 s,
        // avoffset shifts 4.3 s.
        assert_eq!(s.chain.sts_latency_ns(), 2_300_000_000);
        assert_eq!(s.chain.mux_wait_ns(), 200_000_000);
        assert_eq!(s.chain.live_shift_ns(), 4_300_000_000);
        assert_eq!(s.chain.live_audio_queue_ns(), Some(4_000_000_000));
        // The floor holds the caption latency: 1 + 0.2 + 0.3 + 1.5 s.
        a.av_offset_ns = 1_000_000_000;
        a.boundary = "fixed".into();
        let s = resolve(&a).unwrap();
        assert_eq!(s.chain.offset_ns, 3_000_000_000);
        assert_eq!(s.chain.sts_latency_ns(), 200_000_000);
        assert!(s.chain.live_shift_ns() >= 200_000_000);
    }

    #[test]
    fn the_api_key_comes_from_the_variable_or_a_file() {
        assert_eq!(read_api_key(None, None), Ok(None));
        let k = read_api_key(Some("sk-1".into()), None).unwrap().unwrap();
        assert_eq!(k.expose(), "sk-1");
        assert_eq!(format!("{k:?}"), "<redacted>");
        let dir = std::env::temp_dir().join(format!("worker-key-{}", std::process::id()));
        std::fs::write(&dir, "sk-from-file\n").unwrap();
        // The same rule for the variable and the file: a trailing newline is trimmed.
        let k = read_api_key(Some("sk-var\n".into()), None)
            .unwrap()
            .unwrap();
        assert_eq!(k.expose(), "sk-var");
        for bad in ["sk 1", "sk\t1", "sk-1\nsk-2", "sk-\u{7f}", "sk-é", "  \n"] {
            let e = read_api_key(Some(bad.into()), None).unwrap_err();
            assert!(e.starts_with(API_KEY_ENV), "{e}");
            assert!(!e.contains("sk"), "the key is echoed: {e}");
        }
        let path = dir.to_string_lossy().to_string();
        let k = read_api_key(None, Some(path.clone())).unwrap().unwrap();
        assert_eq!(k.expose(), "sk-from-file");
        assert!(
            read_api_key(Some("a".into()), Some(path.clone()))
                .unwrap_err()
                .contains("not both")
        );
        std::fs::remove_file(&dir).unwrap();
        assert!(
            read_api_key(None, Some(path))
                .unwrap_err()
                .contains("cannot read")
        );
    }

    #[test]
    fn bad_settings_name_what_is_wrong() {
        let base = || {
            let mut a = args(&["--stream-id", "t"]);
            a.sts_url = Some("http://sts/p".into());
            a
        };
        let err = |a: Args| resolve(&a).unwrap_err();
        let mut a = base();
        a.stream_id = "a/b".into();
        assert!(err(a).contains("only letters, digits"));
        let mut a = base();
        a.sts_url = None;
        assert!(err(a).contains("WORKER_STS_SERVICE_URL"));
        let mut a = base();
        a.sts_url = Some("ftp://sts".into());
        assert!(err(a).contains("not an http(s):// URL"));
        let mut a = base();
        a.sts_mode = "magic".into();
        assert!(err(a).contains("--sts-mode"));
        let mut a = base();
        a.fragment_target_dur = 99;
        assert!(err(a).contains("WORKER_FRAGMENT_TARGET_DUR"));
        let mut a = base();
        a.sts_timeout_ms = 50;
        assert!(err(a).contains("WORKER_STS_TIMEOUT_MS"));
        // Absurd values the elements would refuse (their defaults used silently), or that
        // wrap around in nanoseconds.
        let mut a = base();
        a.sts_timeout_ms = 18_446_744_073_710;
        assert!(err(a).contains("WORKER_STS_TIMEOUT_MS 18446744073710 ms is outside 100..=600000"));
        let mut a = base();
        a.av_offset_ns = 6_000_000_000_000;
        assert!(err(a).contains("WORKER_AV_OFFSET_NS 6000000000000 (6000 s) is above"));
        let mut a = base();
        a.av_offset_ns = 500_000_000_000;
        assert!(err(a).contains("stsbridge latency"));
        let mut a = base();
        a.sts_max_retries = 11;
        assert!(err(a).contains("WORKER_STS_MAX_RETRIES"));
        let mut a = base();
        a.boundary_max_ms = 20_000;
        assert!(err(a).contains("WORKER_BOUNDARY_MAX_MS"));
        let mut a = base();
        a.sts_protocol = "grpc".into();
        assert!(err(a).contains("WORKER_STS_PROTOCOL"));
        let mut a = base();
        a.input = Some("http://x/y".into());
        assert!(err(a).contains("not an rtsp:// or rtmp:// URL"));
        let mut a = base();
        a.output = Some("file:///tmp/o.flv".into());
        assert!(err(a).contains("not an rtmp:// or srt:// URL"));
    }

    /// The limits the settings are checked against are the elements' own (their ParamSpecs,
    /// what gst-inspect-1.0 shows), and so are the defaults.
    #[test]
    fn the_checks_are_the_elements_ranges() {
        use gst::prelude::*;
        crate::init().unwrap();
        let spec = |factory: &str, prop: &str| {
            let e = gst::ElementFactory::make(factory).build().unwrap();
            e.find_property(prop).unwrap()
        };
        let u64_spec = |factory: &str, prop: &str| {
            let p = spec(factory, prop);
            let p = p.downcast::<gst::glib::ParamSpecUInt64>().unwrap();
            (p.minimum(), p.maximum(), p.default_value())
        };
        assert_eq!(
            u64_spec("stsbridge", "timeout"),
            (
                stsbridge::MIN_TIMEOUT,
                stsbridge::MAX_TIMEOUT,
                stsbridge::DEFAULT_TIMEOUT
            )
        );
        assert_eq!(u64_spec("stsbridge", "latency").1, stsbridge::MAX_LATENCY);
        assert_eq!(
            u64_spec("avoffset", "offset"),
            (0, avoffset::MAX_OFFSET, avoffset::DEFAULT_OFFSET)
        );
        for (prop, default) in [
            ("chunk-duration", dubchunker::DEFAULT_CHUNK_DURATION),
            ("min-duration", dubchunker::DEFAULT_MIN_DURATION),
            ("max-duration", dubchunker::DEFAULT_MAX_DURATION),
        ] {
            assert_eq!(
                u64_spec("dubchunker", prop),
                (dubchunker::MIN_FRAGMENT, dubchunker::MAX_FRAGMENT, default)
            );
        }
        let retries = spec("stsbridge", "max-retries")
            .downcast::<gst::glib::ParamSpecUInt>()
            .unwrap();
        assert_eq!(
            (retries.maximum(), retries.default_value()),
            (stsbridge::MAX_MAX_RETRIES, stsbridge::DEFAULT_MAX_RETRIES)
        );
        // The worker's defaults are the elements'.
        let a = args(&["--stream-id", "t"]);
        assert_eq!(a.sts_timeout_ms * MS, stsbridge::DEFAULT_TIMEOUT);
        assert_eq!(a.av_offset_ns, avoffset::DEFAULT_OFFSET);
        assert_eq!(
            a.fragment_target_dur * MS,
            dubchunker::DEFAULT_CHUNK_DURATION
        );
    }
}
