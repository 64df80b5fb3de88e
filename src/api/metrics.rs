//! Prometheus metrics at `/metrics`: deploys by outcome, phase durations,
//! jobs running now.

use super::Shared;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: String,
}

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    deploys: Family<Outcome, Counter>,
    phases: Family<PhaseLabel, Histogram>,
    active: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let deploys = Family::<Outcome, Counter>::default();
        // 10 ms to about 20 minutes.
        let phases = Family::<PhaseLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.01, 2.5, 14))
        });
        let active = Gauge::default();
        registry.register(
            "deployer_deploys",
            "Finished deploy jobs, by outcome (success or the failure kind)",
            deploys.clone(),
        );
        registry.register(
            "deployer_phase_duration_seconds",
            "How long each phase took",
            phases.clone(),
        );
        registry.register(
            "deployer_active_jobs",
            "Deploy jobs running now",
            active.clone(),
        );
        Metrics {
            registry,
            deploys,
            phases,
            active,
        }
    }
}

impl Metrics {
    pub fn job_started(&self) {
        self.active.inc();
    }

    /// Records a finished job (the gauge goes down, counters go up).
    pub fn job_finished(&self, job: &crate::model::Job) {
        self.active.dec();
        let outcome = match job.state.failure() {
            None => "success".to_string(),
            Some(kind) => kind.as_str().to_string(),
        };
        self.deploys.get_or_create(&Outcome { outcome }).inc();
        for p in &job.phases {
            if let Some(ms) = p.state.duration_ms() {
                self.phases
                    .get_or_create(&PhaseLabel {
                        phase: p.name.as_str().to_string(),
                    })
                    .observe(ms as f64 / 1000.0);
            }
        }
    }
}

/// Prometheus (OpenMetrics) text: deploys by outcome, phase durations,
/// active jobs.
#[utoipa::path(get, path = "/metrics", tag = "service",
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text", body = String)))]
pub async fn metrics(State(state): State<Shared>) -> impl IntoResponse {
    let mut text = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut text, &state.metrics.registry);
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}
