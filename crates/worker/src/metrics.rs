//! The worker's Prometheus metrics and the HTTP endpoints of the metrics port: `GET /metrics`,
//! `GET /health` (200 while PLAYING with the source delivering, else 503) and `GET /status`
//! (JSON, see [`crate::status::Board::to_json`]).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use axum::response::IntoResponse;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use gstdubbing::stsbridge::BreakerState;

use crate::status::Board;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub stream_id: String,
    pub language: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub stream_id: String,
    pub language: String,
    pub reason: String,
}

/// `worker_errors_total`: what ended the run ([`crate::supervisor::WorkerError::label`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

/// Per dubbed language.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LanguageLabels {
    pub stream_id: String,
    pub language: String,
}

/// The worker's Prometheus metrics (names in the README).
pub struct Metrics {
    pub fragments: Family<StatusLabels, Counter>,
    pub fallbacks: Family<ReasonLabels, Counter>,
    pub bus_errors: Counter,
    pub bus_warnings: Counter,
    pub inflight: Family<LanguageLabels, Gauge>,
    pub av_sync_delta_ms: Gauge<f64, AtomicU64>,
    pub breaker_state: Family<LanguageLabels, Gauge>,
    /// With Socket.IO: 1 while the STS session is up (stream:ready), 0 while it is not.
    pub sts_session_up: Family<LanguageLabels, Gauge>,
    /// 1 for the protocol in use (label `protocol`: http or socketio).
    pub sts_protocol: Family<Vec<(String, String)>, Gauge>,
    pub rtt_ms: Histogram,
    pub chunk_latency_ms: Histogram,
    pub published_delay_ms: Family<LanguageLabels, Gauge<f64, AtomicU64>>,
    /// 1 while the source delivers data, 0 while it is silent or gone.
    pub source_up: Gauge,
    /// 1 while every output accepts data, 0 before the first or while one is stuck.
    pub output_up: Gauge,
    /// Reconnection attempts of the RTMP outputs after an output outage.
    pub output_reconnects: Counter,
    /// Reconnection attempts of the source after a source outage.
    pub source_reconnects: Counter,
    /// The error that ends the run, by kind (set just before the exit).
    pub errors: Family<KindLabels, Counter>,
    /// CEA-608 captions put into the video, by status (`shown`, `late`, `dropped`).
    pub captions: Family<StatusLabels, Counter>,
}

impl Metrics {
    /// The metrics, registered in `registry`.
    pub fn new(registry: &mut Registry) -> Metrics {
        let buckets = || {
            [
                50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 6000.0, 8000.0,
                10000.0,
            ]
            .into_iter()
        };
        let m = Metrics {
            fragments: Family::default(),
            fallbacks: Family::default(),
            bus_errors: Counter::default(),
            bus_warnings: Counter::default(),
            inflight: Family::default(),
            av_sync_delta_ms: Gauge::default(),
            breaker_state: Family::default(),
            sts_session_up: Family::default(),
            sts_protocol: Family::default(),
            rtt_ms: Histogram::new(buckets()),
            chunk_latency_ms: Histogram::new(buckets()),
            published_delay_ms: Family::default(),
            source_up: Gauge::default(),
            output_up: Gauge::default(),
            output_reconnects: Counter::default(),
            source_reconnects: Counter::default(),
            errors: Family::default(),
            captions: Family::default(),
        };
        registry.register(
            "worker_audio_fragments",
            "Audio fragments out of stsbridge, by outcome",
            m.fragments.clone(),
        );
        registry.register(
            "worker_fallback",
            "Fragments that went out as fallback audio, by reason",
            m.fallbacks.clone(),
        );
        registry.register(
            "worker_gst_bus_errors",
            "Error messages on the pipeline bus",
            m.bus_errors.clone(),
        );
        registry.register(
            "worker_gst_bus_warnings",
            "Warning messages on the pipeline bus",
            m.bus_warnings.clone(),
        );
        registry.register(
            "worker_inflight_fragments",
            "STS requests in flight",
            m.inflight.clone(),
        );
        registry.register(
            "worker_av_sync_delta_ms",
            "A/V delta at the output of avoffset (audio - video position), ms",
            m.av_sync_delta_ms.clone(),
        );
        registry.register(
            "worker_sts_breaker_state",
            "STS circuit breaker: 0 closed, 1 half-open, 2 open",
            m.breaker_state.clone(),
        );
        registry.register(
            "worker_sts_session_up",
            "With WORKER_STS_PROTOCOL=socketio: 1 while the STS session is up, 0 while not",
            m.sts_session_up.clone(),
        );
        registry.register(
            "worker_sts_protocol",
            "The STS protocol in use (label protocol: http or socketio), always 1",
            m.sts_protocol.clone(),
        );
        registry.register(
            "worker_sts_rtt_ms",
            "Round-trip time of STS requests, ms",
            m.rtt_ms.clone(),
        );
        registry.register(
            "worker_chunk_end_to_end_latency_ms",
            "From the end of a fragment's capture to its dubbed audio leaving stsbridge, ms",
            m.chunk_latency_ms.clone(),
        );
        registry.register(
            "worker_published_delay_ms",
            "How far behind its input the published stream is (wall clock), ms; grows while nothing is published",
            m.published_delay_ms.clone(),
        );
        registry.register(
            "worker_source_up",
            "1 while the source delivers data, 0 while it is silent or gone",
            m.source_up.clone(),
        );
        registry.register(
            "worker_output_up",
            "1 while every output (RTMP or SRT) accepts data, 0 before the first data or while one is stuck",
            m.output_up.clone(),
        );
        registry.register(
            "worker_source_reconnects",
            "Reconnection attempts of the source after a source outage",
            m.source_reconnects.clone(),
        );
        registry.register(
            "worker_output_reconnects",
            "Reconnection attempts of the outputs (RTMP or SRT) after an output outage",
            m.output_reconnects.clone(),
        );
        registry.register(
            "worker_errors",
            "The error that ends the run, by kind (source_unreachable, source_outage, output_outage, unsupported_input, pipeline, ...; see the exit codes)",
            m.errors.clone(),
        );
        registry.register(
            "worker_captions",
            "CEA-608 captions put into the video (WORKER_CAPTIONS=cea608), by status: shown (all shown), late (shown over half a frame after their start), dropped (over before they could be shown)",
            m.captions.clone(),
        );
        m
    }
}

/// `worker_sts_breaker_state` of a breaker state.
pub fn breaker_code(state: BreakerState) -> i64 {
    match state {
        BreakerState::Open => 2,
        BreakerState::HalfOpen => 1,
        BreakerState::Closed => 0,
    }
}

/// Bounds of the metrics port's HTTP server: the port may face the network (`0.0.0.0` in
/// containers), and idle or slow clients must not take the descriptors the pipeline needs.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// Connections served at once; more are closed as they are accepted.
    pub max_connections: usize,
    /// A request's header must arrive within this (an idle connection is closed after it).
    pub header_timeout: std::time::Duration,
    /// A connection is closed after this, whatever it does (keep-alive scrapers reconnect).
    pub connection_lifetime: std::time::Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_connections: 32,
            header_timeout: std::time::Duration::from_secs(5),
            connection_lifetime: std::time::Duration::from_secs(60),
        }
    }
}

/// Serves `app` on `listener` within `limits` (until the runtime stops).
pub async fn serve(listener: tokio::net::TcpListener, app: axum::Router, limits: ServeLimits) {
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of descriptors (or another transient error): wait, never spin.
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        // Past the cap the connection is closed at once: it holds no descriptor.
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(limits.connection_lifetime, connection).await;
        });
    }
}

/// A Prometheus file-based discovery target (`file_sd_configs`), `<dir>/<stream id>.json`,
/// written when the metrics port is bound and removed on drop.
pub struct DiscoveryFile {
    path: std::path::PathBuf,
}

impl DiscoveryFile {
    /// Writes the target `host:port`, labelled with the stream id (atomically: a temporary
    /// file renamed, so Prometheus never reads half of it).
    pub fn write(
        dir: &std::path::Path,
        stream_id: &str,
        host: &str,
        port: u16,
    ) -> std::io::Result<DiscoveryFile> {
        let path = dir.join(format!("{stream_id}.json"));
        let tmp = dir.join(format!(".{stream_id}.json.tmp"));
        let body = serde_json::json!([{
            "targets": [format!("{host}:{port}")],
            "labels": { "stream_id": stream_id },
        }]);
        std::fs::write(&tmp, body.to_string())?;
        std::fs::rename(&tmp, &path)?;
        Ok(DiscoveryFile { path })
    }
}

impl Drop for DiscoveryFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `GET /metrics`: `registry` in the OpenMetrics text format; `GET /health` and `GET /status`
/// from `board`.
pub fn router(registry: Arc<Registry>, board: Arc<Board>) -> axum::Router {
    let health_board = board.clone();
    axum::Router::new()
        .route(
            "/health",
            axum::routing::get(move || {
                let board = health_board.clone();
                async move {
                    let now = std::time::Instant::now();
                    let code = if board.healthy(now) {
                        axum::http::StatusCode::OK
                    } else {
                        axum::http::StatusCode::SERVICE_UNAVAILABLE
                    };
                    (code, axum::Json(board.to_json(now)))
                }
            }),
        )
        .route(
            "/status",
            axum::routing::get(move || {
                let board = board.clone();
                async move { axum::Json(board.to_json(std::time::Instant::now())) }
            }),
        )
        .route(
            "/metrics",
            axum::routing::get(move || {
                let registry = registry.clone();
                async move {
                    let mut body = String::new();
                    match prometheus_client::encoding::text::encode(&mut body, &registry) {
                        Ok(()) => (
                            [(
                                axum::http::header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            body,
                        )
                            .into_response(),
                        Err(_) => (
                            [(axum::http::header::CONTENT_TYPE, "text/plain")],
                            "encoding error".to_string(),
                        )
                            .into_response(),
                    }
                }
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_states_have_codes() {
        assert_eq!(breaker_code(BreakerState::Closed), 0);
        assert_eq!(breaker_code(BreakerState::HalfOpen), 1);
        assert_eq!(breaker_code(BreakerState::Open), 2);
    }

    #[test]
    fn every_metric_is_exposed_with_its_labels() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        m.fragments
            .get_or_create(&StatusLabels {
                stream_id: "s1".into(),
                language: "es".into(),
                status: "dubbed".into(),
            })
            .inc();
        m.fallbacks
            .get_or_create(&ReasonLabels {
                stream_id: "s1".into(),
                language: "de".into(),
                reason: "timeout".into(),
            })
            .inc_by(2);
        let de = LanguageLabels {
            stream_id: "s1".into(),
            language: "de".into(),
        };
        m.breaker_state
            .get_or_create(&de)
            .set(breaker_code(BreakerState::Open));
        m.inflight.get_or_create(&de).set(0);
        m.published_delay_ms.get_or_create(&de).set(6000.5);
        m.rtt_ms.observe(120.0);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            r#"worker_audio_fragments_total{stream_id="s1",language="es",status="dubbed"} 1"#,
            r#"worker_fallback_total{stream_id="s1",language="de",reason="timeout"} 2"#,
            "worker_gst_bus_errors_total 0",
            "worker_gst_bus_warnings_total 0",
            r#"worker_inflight_fragments{stream_id="s1",language="de"} 0"#,
            r#"worker_sts_breaker_state{stream_id="s1",language="de"} 2"#,
            r#"worker_published_delay_ms{stream_id="s1",language="de"} 6000.5"#,
            "worker_source_up 0",
            "worker_output_reconnects_total 0",
            "worker_source_reconnects_total 0",
            r#"worker_sts_rtt_ms_bucket{le="250.0"} 1"#,
            "worker_sts_rtt_ms_count 1",
            "worker_chunk_end_to_end_latency_ms_count 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        for name in [
            "worker_av_sync_delta_ms",
            "worker_published_delay_ms",
            "worker_source_up",
            "worker_output_up",
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} gauge")),
                "{name}: {text}"
            );
        }
    }
}
