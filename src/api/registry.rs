//! The built-in registry, speaking the seed's Registry API (`POST
//! /register` with droplet_id, service_name, endpoint) and storing services
//! in deployer's own database, so deploy → register works with no other
//! service. When deployer serves without an external registry, its Register
//! phase posts here; a registration is only made after a release passed its
//! health check and became current, so the registry never points elsewhere.

use super::{ApiError, Shared};
use crate::store::RegistryEntry;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::Deserialize;
use std::time::Duration;

pub fn routes() -> axum::Router<Shared> {
    axum::Router::new()
        .route("/register", post(register))
        .route("/events", post(event))
        .route("/registry", get(list))
        .route("/registry/{service_name}", get(one).delete(remove))
        .route("/registry/{service_name}/health", get(health))
}

/// The seed's Registry API request.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct RegisterRequest {
    droplet_id: i64,
    service_name: String,
    endpoint: String,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Registered {
    pub status: String,
    pub service: RegistryEntry,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct RegistryList {
    pub services: Vec<RegistryEntry>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Deregistered {
    pub status: String,
    pub service_name: String,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ServiceHealth {
    pub service_name: String,
    pub url: String,
    /// healthy | unhealthy | unreachable
    pub status: String,
    pub http_status: Option<u16>,
}

/// Register (or re-register) a service.
#[utoipa::path(post, path = "/register", tag = "registry",
    request_body = RegisterRequest,
    responses(
        (status = 200, body = Registered),
        (status = 400, body = super::ErrorBody),
        (status = 401, body = super::ErrorBody),
        (status = 415, description = "Not JSON (Content-Type: application/json)", body = super::ErrorBody),
        (status = 413, description = "Body over 1 MiB"),
    ),
    security(("bearer" = [])))]
pub async fn register(
    State(state): State<Shared>,
    body: Bytes,
) -> Result<Json<Registered>, ApiError> {
    let req: RegisterRequest = super::deploy::parse(&body)?;
    crate::input::plan::validate_name(&req.service_name)?;
    if !(req.endpoint.starts_with("http://") || req.endpoint.starts_with("https://")) {
        return Err(ApiError::bad_field(
            "endpoint",
            "endpoint must be an http(s) URL",
        ));
    }
    let entry = RegistryEntry {
        service_name: req.service_name,
        droplet_id: req.droplet_id,
        endpoint: req.endpoint,
        registered_at: chrono::Utc::now(),
    };
    state.store.register(&entry).await?;
    Ok(Json(Registered {
        status: "registered".into(),
        service: entry,
    }))
}

/// An event about a service (deployer reports rollbacks here).
#[derive(Deserialize, utoipa::ToSchema)]
pub struct RegistryEvent {
    /// What happened: `rollback`.
    event: String,
    service_name: String,
    /// Anything else the reporter adds (trigger, from_release,
    /// to_release, reason, job_id, at).
    #[serde(flatten)]
    #[schema(value_type = Object)]
    rest: serde_json::Map<String, serde_json::Value>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct EventRecorded {
    pub status: String,
}

/// Record an event about a service (a rollback) in the audit log.
#[utoipa::path(post, path = "/events", tag = "registry",
    request_body = RegistryEvent,
    responses(
        (status = 200, body = EventRecorded),
        (status = 400, body = super::ErrorBody),
        (status = 401, body = super::ErrorBody),
        (status = 415, description = "Not JSON (Content-Type: application/json)", body = super::ErrorBody),
        (status = 413, description = "Body over 1 MiB"),
    ),
    security(("bearer" = [])))]
pub async fn event(
    State(state): State<Shared>,
    body: Bytes,
) -> Result<Json<EventRecorded>, ApiError> {
    let e: RegistryEvent = super::deploy::parse(&body)?;
    crate::input::plan::validate_name(&e.service_name)?;
    let ok = !e.event.is_empty() && e.event.len() <= 64;
    if !ok
        || !e
            .event
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(ApiError::bad_field(
            "event",
            "event must be a word, as rollback",
        ));
    }
    let job_id = e
        .rest
        .get("job_id")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let entry = crate::model::AuditEntry {
        at: chrono::Utc::now(),
        actor: "registry".into(),
        action: format!("registry {}", e.event),
        service_name: e.service_name,
        job_id,
        outcome: "recorded".into(),
        duration_ms: None,
        details: crate::render::output::printable(&serde_json::Value::Object(e.rest).to_string())
            .chars()
            .take(1000)
            .collect(),
    };
    state.store.audit(&entry).await?;
    Ok(Json(EventRecorded {
        status: "recorded".into(),
    }))
}

/// Every registered service.
#[utoipa::path(get, path = "/registry", tag = "registry",
    responses((status = 200, body = RegistryList), (status = 500, body = super::ErrorBody)))]
pub async fn list(State(state): State<Shared>) -> Result<Json<RegistryList>, ApiError> {
    Ok(Json(RegistryList {
        services: state.store.registry().await?,
    }))
}

async fn find(state: &Shared, name: &str) -> Result<RegistryEntry, ApiError> {
    crate::input::plan::validate_name(name)?;
    state
        .store
        .registry()
        .await?
        .into_iter()
        .find(|e| e.service_name == name)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("'{name}' is not registered")))
}

/// One registered service.
#[utoipa::path(get, path = "/registry/{service_name}", tag = "registry",
    params(("service_name" = String, Path)),
    responses(
        (status = 200, body = RegistryEntry),
        (status = 400, body = super::ErrorBody),
        (status = 404, body = super::ErrorBody),
    ))]
pub async fn one(
    State(state): State<Shared>,
    Path(name): Path<String>,
) -> Result<Json<RegistryEntry>, ApiError> {
    find(&state, &name).await.map(Json)
}

/// Deregister a service.
#[utoipa::path(delete, path = "/registry/{service_name}", tag = "registry",
    params(("service_name" = String, Path)),
    responses(
        (status = 200, body = Deregistered),
        (status = 400, body = super::ErrorBody),
        (status = 401, body = super::ErrorBody),
        (status = 404, body = super::ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn remove(
    State(state): State<Shared>,
    Path(name): Path<String>,
) -> Result<Json<Deregistered>, ApiError> {
    crate::input::plan::validate_name(&name)?;
    if state.store.deregister(&name).await? {
        Ok(Json(Deregistered {
            status: "deregistered".into(),
            service_name: name,
        }))
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("'{name}' is not registered"),
        ))
    }
}

/// `ENDPOINT/health`, with the endpoint's query and fragment dropped (so
/// nothing can turn `/health` into part of another URL).
fn health_url(endpoint: &str) -> Option<String> {
    let mut url = reqwest::Url::parse(endpoint).ok()?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return None;
    }
    url.set_query(None);
    url.set_fragment(None);
    let path = format!("{}/health", url.path().trim_end_matches('/'));
    url.set_path(&path);
    Some(url.to_string())
}

/// Asks a registered service its health.
#[utoipa::path(get, path = "/registry/{service_name}/health", tag = "registry",
    params(("service_name" = String, Path)),
    responses(
        (status = 200, body = ServiceHealth),
        (status = 400, body = super::ErrorBody),
        (status = 404, body = super::ErrorBody),
    ))]
pub async fn health(
    State(state): State<Shared>,
    Path(name): Path<String>,
) -> Result<Json<ServiceHealth>, ApiError> {
    let entry = find(&state, &name).await?;
    // Only the registered endpoint's own health path, and no redirect to
    // anywhere else: the server's network position is not for lending.
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()
        .expect("HTTP client");
    let url = health_url(&entry.endpoint).ok_or_else(|| {
        ApiError::bad_field(
            "endpoint",
            format!("'{}' is not an http(s) URL", entry.endpoint),
        )
    })?;
    let (status, code) = match client.get(&url).send().await {
        Ok(r) if r.status().is_success() => ("healthy", Some(r.status().as_u16())),
        Ok(r) => ("unhealthy", Some(r.status().as_u16())),
        Err(_) => ("unreachable", None),
    };
    Ok(Json(ServiceHealth {
        service_name: name,
        url,
        status: status.into(),
        http_status: code,
    }))
}
