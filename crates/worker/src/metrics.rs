//! The worker's Prometheus metrics and the `GET /metrics` endpoint serving them.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use axum::response::IntoResponse;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub stream_id: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub stream_id: String,
    pub reason: String,
}

/// The worker's Prometheus metrics (names in the README).
pub struct Metrics {
    pub fragments: Family<StatusLabels, Counter>,
    pub fallbacks: Family<ReasonLabels, Counter>,
    pub bus_errors: Counter,
    pub bus_warnings: Counter,
    pub inflight: Gauge,
    pub av_sync_delta_ms: Gauge<f64, AtomicU64>,
    pub breaker_state: Gauge,
    pub rtt_ms: Histogram,
    pub chunk_latency_ms: Histogram,
    pub published_delay_ms: Gauge<f64, AtomicU64>,
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
            inflight: Gauge::default(),
            av_sync_delta_ms: Gauge::default(),
            breaker_state: Gauge::default(),
            rtt_ms: Histogram::new(buckets()),
            chunk_latency_ms: Histogram::new(buckets()),
            published_delay_ms: Gauge::default(),
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
            "How far behind its input the published stream is (wall clock), ms",
            m.published_delay_ms.clone(),
        );
        m
    }
}

/// `worker_sts_breaker_state` of stsbridge's `breaker-state`.
pub fn breaker_code(state: &str) -> i64 {
    match state {
        "open" => 2,
        "half-open" => 1,
        _ => 0,
    }
}

/// `GET /metrics`: `registry` in the OpenMetrics text format.
pub fn router(registry: Arc<Registry>) -> axum::Router {
    axum::Router::new().route(
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
        assert_eq!(breaker_code("closed"), 0);
        assert_eq!(breaker_code("half-open"), 1);
        assert_eq!(breaker_code("open"), 2);
    }

    #[test]
    fn every_metric_is_exposed_with_its_labels() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        m.fragments
            .get_or_create(&StatusLabels {
                stream_id: "s1".into(),
                status: "dubbed".into(),
            })
            .inc();
        m.fallbacks
            .get_or_create(&ReasonLabels {
                stream_id: "s1".into(),
                reason: "timeout".into(),
            })
            .inc_by(2);
        m.breaker_state.set(breaker_code("open"));
        m.rtt_ms.observe(120.0);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            r#"worker_audio_fragments_total{stream_id="s1",status="dubbed"} 1"#,
            r#"worker_fallback_total{stream_id="s1",reason="timeout"} 2"#,
            "worker_gst_bus_errors_total 0",
            "worker_gst_bus_warnings_total 0",
            "worker_inflight_fragments 0",
            "worker_sts_breaker_state 2",
            r#"worker_sts_rtt_ms_bucket{le="250.0"} 1"#,
            "worker_sts_rtt_ms_count 1",
            "worker_chunk_end_to_end_latency_ms_count 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        for name in ["worker_av_sync_delta_ms", "worker_published_delay_ms"] {
            assert!(
                text.contains(&format!("# TYPE {name} gauge")),
                "{name}: {text}"
            );
        }
    }
}
