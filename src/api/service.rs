//! The UDC endpoints every droplet has: `/health`, `/capabilities`,
//! `/state`, `/dependencies`, `/message`.

use super::{ApiError, ErrorBody, Shared};
use crate::support::cmd::Transport;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::Value;
use std::time::Duration;

pub fn routes() -> axum::Router<Shared> {
    axum::Router::new()
        .route("/health", get(health))
        .route("/capabilities", get(capabilities))
        .route("/state", get(state_counts))
        .route("/dependencies", get(dependencies))
        .route("/message", post(message))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    /// healthy | unhealthy
    pub status: String,
    /// connected | unreachable | local (deploys stay on this machine) | misconfigured
    pub ssh_status: String,
    /// reachable | unreachable | builtin | not_configured
    pub registry_status: String,
    /// ok | failing
    pub database: String,
    pub version: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub concurrent_jobs: usize,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Capabilities {
    pub service: String,
    pub version: String,
    pub deployment_methods: Vec<String>,
    /// Where deploys go unless a request names hosts: `local` (this
    /// machine) or the configured SSH target(s), as USER@HOST:PORT.
    pub deploys_to: Vec<String>,
    pub docker_available: bool,
    pub phases: Vec<String>,
    pub features: Vec<String>,
    pub limits: Limits,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct StateCounts {
    pub active: i64,
    pub pending: i64,
    pub completed: i64,
    pub failed: i64,
    pub uptime_seconds: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Dependency {
    pub name: String,
    pub status: String,
    /// Where it is (a URL, a host, a path), when it has an address.
    pub location: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Dependencies {
    pub dependencies: Vec<Dependency>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MessageAck {
    pub status: String,
    pub from: String,
}

/// How long a probe of what deployer depends on is reused: `/health`,
/// `/dependencies` and `/capabilities` polled in a loop must not open an
/// SSH connection or run `docker info` per request.
const PROBE_TTL: Duration = Duration::from_secs(5);

/// The latest probes of deployer's dependencies.
#[derive(Clone)]
pub struct Probed {
    ssh: String,
    registry: String,
    docker: bool,
    at: std::time::Instant,
}

/// The probes, cached for [`PROBE_TTL`]; callers during a probe wait for
/// it instead of starting their own.
#[derive(Default)]
pub struct Probes(tokio::sync::Mutex<Option<Probed>>);

impl Probes {
    async fn get(&self, state: &Shared) -> Probed {
        let mut cached = self.0.lock().await;
        if let Some(p) = cached.as_ref().filter(|p| p.at.elapsed() < PROBE_TTL) {
            return p.clone();
        }
        let (ssh, registry, docker) = tokio::join!(
            ssh_status(state),
            registry_status(state),
            docker_available()
        );
        let probed = Probed {
            ssh,
            registry,
            docker,
            at: std::time::Instant::now(),
        };
        *cached = Some(probed.clone());
        probed
    }
}

/// Whether the configured SSH target answers: "local" when deploys stay on
/// this machine.
async fn ssh_status(state: &Shared) -> String {
    match crate::hosting::site::targets(&state.config, &[]) {
        Ok(targets) => match targets.first() {
            Some(t @ crate::hosting::site::TargetSpec::Ssh { .. }) => {
                match crate::hosting::site::Site::connect(t, &state.state_dir).await {
                    Ok(site) => {
                        site.close().await;
                        "connected".into()
                    }
                    Err(_) => "unreachable".into(),
                }
            }
            _ => "local".into(),
        },
        Err(_) => "misconfigured".into(),
    }
}

/// "builtin" when this server is the registry, else whether it answers.
async fn registry_status(state: &Shared) -> String {
    match &state.config.registry_url {
        Some(url) if *url == state.base_url => "builtin".into(),
        Some(url) => {
            let client = reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(3))
                .build()
                .expect("HTTP client");
            match client.get(url).send().await {
                Ok(_) => "reachable".into(),
                Err(_) => "unreachable".into(),
            }
        }
        None => "not_configured".into(),
    }
}

async fn docker_available() -> bool {
    crate::support::cmd::LocalTransport
        .exec(
            &crate::hosting::runtime::docker::info_cmd(),
            Duration::from_secs(5),
        )
        .await
        .is_ok_and(|o| o.success())
}

/// Health of deployer and what it depends on; 500 when unhealthy.
#[utoipa::path(get, path = "/health", tag = "service",
    responses((status = 200, body = Health), (status = 500, description = "Unhealthy", body = Health)))]
pub async fn health(State(state): State<Shared>) -> (StatusCode, Json<Health>) {
    let db_ok = state.store.job_counts().await.is_ok();
    let Probed { ssh, registry, .. } = state.probes.get(&state).await;
    let healthy = db_ok && ssh != "unreachable" && registry != "unreachable";
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    let body = Health {
        status: if healthy { "healthy" } else { "unhealthy" }.into(),
        ssh_status: ssh,
        registry_status: registry,
        database: if db_ok { "ok" } else { "failing" }.into(),
        version: env!("CARGO_PKG_VERSION").into(),
    };
    (code, Json(body))
}

/// Deployment methods, features and limits.
#[utoipa::path(get, path = "/capabilities", tag = "service", responses((status = 200, body = Capabilities)))]
pub async fn capabilities(State(state): State<Shared>) -> Json<Capabilities> {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    Json(Capabilities {
        service: "deployer".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        deployment_methods: strings(&["process", "docker", "systemd", "swarm", "auto"]),
        deploys_to: match crate::hosting::site::targets(&state.config, &[]) {
            Ok(targets) => targets
                .iter()
                .map(crate::hosting::site::TargetSpec::name)
                .collect(),
            Err(e) => vec![format!("invalid target: {}", e.message)],
        },
        docker_available: state.probes.get(&state).await.docker,
        phases: crate::model::PhaseName::ALL
            .iter()
            .map(|p| p.as_str().to_string())
            .collect(),
        features: strings(&[
            "automatic rollback",
            "manual rollback",
            "per-service lock",
            "audit log",
            "ssh + sftp incremental transfer",
            "strict host keys",
            "rolling waves with canary",
            "built-in registry",
            "server-sent events",
            "pipeline stages (verify, fix) before a deploy",
            "resource limits and job timeout",
            "fleet-wide stop, start, restart and rollback",
        ]),
        limits: Limits {
            max_body_bytes: super::BODY_LIMIT,
            concurrent_jobs: state.options.workers,
        },
    })
}

/// How many jobs are active, pending, completed and failed.
#[utoipa::path(get, path = "/state", tag = "service",
    responses((status = 200, body = StateCounts), (status = 500, body = ErrorBody)))]
pub async fn state_counts(State(state): State<Shared>) -> Result<Json<StateCounts>, ApiError> {
    let counts = state.store.job_counts().await?;
    let get = |k: &str| counts.get(k).copied().unwrap_or(0);
    Ok(Json(StateCounts {
        active: get("running"),
        pending: get("pending"),
        completed: get("completed"),
        failed: get("failed"),
        uptime_seconds: state.started.elapsed().as_secs(),
    }))
}

/// What deployer depends on and whether each answers.
#[utoipa::path(get, path = "/dependencies", tag = "service", responses((status = 200, body = Dependencies)))]
pub async fn dependencies(State(state): State<Shared>) -> Json<Dependencies> {
    let probed = state.probes.get(&state).await;
    let docker = probed.docker;
    Json(Dependencies {
        dependencies: vec![
            Dependency {
                name: "registry".into(),
                status: probed.registry.clone(),
                location: state.config.registry_url.clone(),
            },
            Dependency {
                name: "ssh".into(),
                status: probed.ssh.clone(),
                location: state.config.target.host.clone(),
            },
            Dependency {
                name: "docker".into(),
                status: if docker { "available" } else { "unavailable" }.into(),
                location: None,
            },
            Dependency {
                name: "database".into(),
                status: match state.store.ping().await {
                    Ok(n) => format!("ok ({n} jobs)"),
                    Err(e) => format!("failing: {e}"),
                },
                location: Some(state.state_dir.join("deployer.db").display().to_string()),
            },
        ],
    })
}

/// An inter-droplet message: recorded in the audit log, acknowledged.
#[utoipa::path(post, path = "/message", tag = "service",
    request_body(content = Object, description = "Any JSON object; `from` names the sender"),
    responses(
        (status = 200, body = MessageAck),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 415, description = "Not JSON (Content-Type: application/json)", body = super::ErrorBody),
        (status = 413, description = "Body over 1 MiB"),
    ),
    security(("bearer" = [])))]
pub async fn message(
    State(state): State<Shared>,
    body: Bytes,
) -> Result<Json<MessageAck>, ApiError> {
    let msg: Value = super::deploy::parse(&body)?;
    if !msg.is_object() {
        return Err(ApiError::bad_field("body", "a message is a JSON object"));
    }
    // Who sent it is who authenticated (the token's holder); what the body
    // says about itself is kept as its claim, JSON-escaped.
    let from = msg
        .get("from")
        .or_else(|| msg.get("source"))
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .chars()
        .filter(|c| !c.is_control())
        .take(100)
        .collect::<String>();
    let text: String = msg.to_string().chars().take(500).collect();
    state
        .store
        .audit(&crate::model::AuditEntry {
            at: chrono::Utc::now(),
            actor: "api (token holder)".into(),
            action: "message".into(),
            service_name: "deployer".into(),
            job_id: None,
            outcome: "received".into(),
            duration_ms: None,
            details: text,
        })
        .await?;
    Ok(Json(MessageAck {
        status: "received".into(),
        from,
    }))
}
