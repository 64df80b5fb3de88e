//! The UDC endpoints every droplet has: `/health`, `/capabilities`,
//! `/state`, `/dependencies`, `/message`.

use super::{ApiError, Shared};
use crate::cmd::Transport;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::time::Duration;

pub fn routes() -> axum::Router<Shared> {
    axum::Router::new()
        .route("/health", get(health))
        .route("/capabilities", get(capabilities))
        .route("/state", get(state_counts))
        .route("/dependencies", get(dependencies))
        .route("/message", post(message))
}

/// Whether the configured SSH target answers: "local" when deploys stay on
/// this machine.
async fn ssh_status(state: &Shared) -> String {
    match crate::site::targets(&state.config, &[]) {
        Ok(targets) => match targets.first() {
            Some(crate::site::TargetSpec::Ssh { .. }) => {
                match crate::site::Site::connect(&targets[0], &state.state_dir).await {
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

async fn health(State(state): State<Shared>) -> (StatusCode, Json<Value>) {
    let db_ok = state.store.job_counts().await.is_ok();
    let ssh = ssh_status(&state).await;
    let registry = registry_status(&state).await;
    let healthy = db_ok && ssh != "unreachable" && registry != "unreachable";
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    (
        code,
        Json(json!({
            "status": if healthy { "healthy" } else { "unhealthy" },
            "ssh_status": ssh,
            "registry_status": registry,
            "database": if db_ok { "ok" } else { "failing" },
            "version": env!("CARGO_PKG_VERSION"),
        })),
    )
}

async fn capabilities(State(state): State<Shared>) -> Json<Value> {
    let docker = crate::cmd::LocalTransport
        .exec(&crate::runtime::docker::info_cmd(), Duration::from_secs(5))
        .await
        .is_ok_and(|o| o.success());
    Json(json!({
        "service": "deployer",
        "version": env!("CARGO_PKG_VERSION"),
        "deployment_methods": ["process", "docker", "systemd", "auto"],
        "docker_available": docker,
        "phases": crate::model::PhaseName::ALL.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
        "features": [
            "automatic rollback", "manual rollback", "per-service lock", "audit log",
            "ssh + sftp incremental transfer", "strict host keys", "rolling waves with canary",
            "built-in registry", "server-sent events",
        ],
        "limits": {
            "max_body_bytes": super::BODY_LIMIT,
            "concurrent_jobs": state.options.workers,
        },
    }))
}

async fn state_counts(State(state): State<Shared>) -> Result<Json<Value>, ApiError> {
    let counts = state.store.job_counts().await?;
    let get = |k: &str| counts.get(k).copied().unwrap_or(0);
    Ok(Json(json!({
        "active": get("running"),
        "pending": get("pending"),
        "completed": get("completed"),
        "failed": get("failed"),
        "uptime_seconds": state.started.elapsed().as_secs(),
    })))
}

async fn dependencies(State(state): State<Shared>) -> Json<Value> {
    let docker = crate::cmd::LocalTransport
        .exec(&crate::runtime::docker::info_cmd(), Duration::from_secs(5))
        .await
        .is_ok_and(|o| o.success());
    Json(json!({
        "dependencies": [
            {"name": "registry", "url": state.config.registry_url, "status": registry_status(&state).await},
            {"name": "ssh", "host": state.config.target.host, "status": ssh_status(&state).await},
            {"name": "docker", "status": if docker { "available" } else { "unavailable" }},
            {"name": "database", "path": state.state_dir.join("deployer.db"), "status": "ok"},
        ]
    }))
}

/// Inter-droplet messages: recorded in the audit log, acknowledged.
async fn message(State(state): State<Shared>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let msg: Value = super::deploy::parse(&body)?;
    if !msg.is_object() {
        return Err(ApiError::bad_field("body", "a message is a JSON object"));
    }
    let from = msg
        .get("from")
        .or_else(|| msg.get("source"))
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_string();
    let text: String = msg.to_string().chars().take(500).collect();
    state
        .store
        .audit(&crate::model::AuditEntry {
            at: chrono::Utc::now(),
            actor: from.clone(),
            action: "message".into(),
            service_name: "deployer".into(),
            job_id: None,
            outcome: "received".into(),
            duration_ms: None,
            details: text,
        })
        .await?;
    Ok(Json(json!({"status": "received", "from": from})))
}
