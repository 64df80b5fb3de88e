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
use serde_json::{Value, json};
use std::time::Duration;

pub fn routes() -> axum::Router<Shared> {
    axum::Router::new()
        .route("/register", post(register))
        .route("/registry", get(list))
        .route("/registry/{service_name}", get(one).delete(remove))
        .route("/registry/{service_name}/health", get(health))
}

#[derive(Deserialize)]
struct RegisterRequest {
    droplet_id: i64,
    service_name: String,
    endpoint: String,
}

async fn register(State(state): State<Shared>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: RegisterRequest = super::deploy::parse(&body)?;
    crate::plan::validate_name(&req.service_name)?;
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
    Ok(Json(json!({"status": "registered", "service": entry})))
}

async fn list(State(state): State<Shared>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"services": state.store.registry().await?})))
}

async fn find(state: &Shared, name: &str) -> Result<RegistryEntry, ApiError> {
    crate::plan::validate_name(name)?;
    state
        .store
        .registry()
        .await?
        .into_iter()
        .find(|e| e.service_name == name)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("'{name}' is not registered")))
}

async fn one(
    State(state): State<Shared>,
    Path(name): Path<String>,
) -> Result<Json<RegistryEntry>, ApiError> {
    find(&state, &name).await.map(Json)
}

async fn remove(
    State(state): State<Shared>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    crate::plan::validate_name(&name)?;
    if state.store.deregister(&name).await? {
        Ok(Json(
            json!({"status": "deregistered", "service_name": name}),
        ))
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("'{name}' is not registered"),
        ))
    }
}

/// Asks a registered service its health.
async fn health(
    State(state): State<Shared>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let entry = find(&state, &name).await?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("HTTP client");
    let url = format!("{}/health", entry.endpoint.trim_end_matches('/'));
    let (status, code) = match client.get(&url).send().await {
        Ok(r) if r.status().is_success() => ("healthy", Some(r.status().as_u16())),
        Ok(r) => ("unhealthy", Some(r.status().as_u16())),
        Err(_) => ("unreachable", None),
    };
    Ok(Json(
        json!({"service_name": name, "url": url, "status": status, "http_status": code}),
    ))
}
