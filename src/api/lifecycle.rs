//! `/services/{service_name}/stop|start|restart`: the day-2 commands of the
//! CLI, on every host the service's current release runs on.

use super::{ApiError, Shared};
use axum::Json;
use axum::extract::{Path, State};
use axum::routing::post;

pub fn routes() -> axum::Router<Shared> {
    axum::Router::new()
        .route("/services/{service_name}/stop", post(stop))
        .route("/services/{service_name}/start", post(start))
        .route("/services/{service_name}/restart", post(restart))
        .route("/services/{service_name}/pause", post(pause))
        .route("/services/{service_name}/resume", post(resume))
}

/// What a stop, start or restart did.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Done {
    pub service_name: String,
    /// stop | start | restart | pause | resume
    pub action: String,
    /// What happened, host by host.
    pub details: String,
}

/// The engine for a day-2 command: it waits for a running deploy of the
/// service a little, not as long as a queued deploy does.
fn engine(state: &Shared) -> Result<crate::engine::Engine, ApiError> {
    let targets = crate::hosting::site::targets(&state.config, &[])?;
    Ok(super::engine(
        state,
        targets,
        std::time::Duration::from_secs(30),
    ))
}

/// Stop the service's running release on each of its hosts (it stays
/// deployed; `start` brings it back).
#[utoipa::path(post, path = "/services/{service_name}/stop", tag = "services",
    params(("service_name" = String, Path)),
    responses(
        (status = 200, body = Done),
        (status = 401, description = "Missing or wrong token", body = super::ErrorBody),
        (status = 400, description = "Not a valid service name", body = super::ErrorBody),
        (status = 404, description = "No such service", body = super::ErrorBody),
        (status = 415, description = "Not JSON (Content-Type: application/json)", body = super::ErrorBody),
        (status = 502, description = "A host of the service cannot be reached", body = super::ErrorBody),
        (status = 409, description = "Another job of the service is running", body = super::ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn stop(
    State(state): State<Shared>,
    Path(service): Path<String>,
) -> Result<Json<Done>, ApiError> {
    let stopped = engine(&state)?.stop(&service).await?;
    Ok(done(service, "stop", stopped.to_string()))
}

/// Start the service's current release on each of its hosts,
/// health-checked.
#[utoipa::path(post, path = "/services/{service_name}/start", tag = "services",
    params(("service_name" = String, Path)),
    responses(
        (status = 200, body = Done),
        (status = 401, description = "Missing or wrong token", body = super::ErrorBody),
        (status = 400, description = "Not a valid service name", body = super::ErrorBody),
        (status = 404, description = "No such service", body = super::ErrorBody),
        (status = 415, description = "Not JSON (Content-Type: application/json)", body = super::ErrorBody),
        (status = 502, description = "A host of the service cannot be reached", body = super::ErrorBody),
        (status = 409, description = "Another job of the service is running", body = super::ErrorBody),
        (status = 500, description = "The release did not become healthy", body = super::ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn start(
    State(state): State<Shared>,
    Path(service): Path<String>,
) -> Result<Json<Done>, ApiError> {
    let details = engine(&state)?.start(&service).await?;
    Ok(done(service, "start", details))
}

/// Stop and start the service's current release on each of its hosts,
/// one host after the other, health-checked.
#[utoipa::path(post, path = "/services/{service_name}/restart", tag = "services",
    params(("service_name" = String, Path)),
    responses(
        (status = 200, body = Done),
        (status = 401, description = "Missing or wrong token", body = super::ErrorBody),
        (status = 400, description = "Not a valid service name", body = super::ErrorBody),
        (status = 404, description = "No such service", body = super::ErrorBody),
        (status = 415, description = "Not JSON (Content-Type: application/json)", body = super::ErrorBody),
        (status = 502, description = "A host of the service cannot be reached", body = super::ErrorBody),
        (status = 409, description = "Another job of the service is running", body = super::ErrorBody),
        (status = 500, description = "The release did not become healthy", body = super::ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn restart(
    State(state): State<Shared>,
    Path(service): Path<String>,
) -> Result<Json<Done>, ApiError> {
    let details = engine(&state)?.restart(&service).await?;
    Ok(done(service, "restart", details))
}

/// Behind the proxy: answer 503 with a maintenance page on each of the
/// service's hosts until it is resumed (or deployed again).
#[utoipa::path(post, path = "/services/{service_name}/pause", tag = "services",
    params(("service_name" = String, Path)),
    responses(
        (status = 200, body = Done),
        (status = 400, description = "Not a valid service name, or not behind the proxy", body = super::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = super::ErrorBody),
        (status = 404, description = "No such service", body = super::ErrorBody),
        (status = 409, description = "Another job of the service is running", body = super::ErrorBody),
        (status = 415, description = "Not JSON (Content-Type: application/json)", body = super::ErrorBody),
        (status = 500, description = "The proxy could not be changed", body = super::ErrorBody),
        (status = 502, description = "A host of the service cannot be reached", body = super::ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn pause(
    State(state): State<Shared>,
    Path(service): Path<String>,
) -> Result<Json<Done>, ApiError> {
    let details = engine(&state)?.pause(&service, None).await?;
    Ok(done(service, "pause", details))
}

/// Behind the proxy: send the public port to the current release again.
#[utoipa::path(post, path = "/services/{service_name}/resume", tag = "services",
    params(("service_name" = String, Path)),
    responses(
        (status = 200, body = Done),
        (status = 400, description = "Not a valid service name, or not behind the proxy", body = super::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = super::ErrorBody),
        (status = 404, description = "No such service", body = super::ErrorBody),
        (status = 409, description = "Another job of the service is running", body = super::ErrorBody),
        (status = 415, description = "Not JSON (Content-Type: application/json)", body = super::ErrorBody),
        (status = 500, description = "The proxy could not be changed", body = super::ErrorBody),
        (status = 502, description = "A host of the service cannot be reached", body = super::ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn resume(
    State(state): State<Shared>,
    Path(service): Path<String>,
) -> Result<Json<Done>, ApiError> {
    let details = engine(&state)?.resume(&service).await?;
    Ok(done(service, "resume", details))
}

fn done(service_name: String, action: &str, details: String) -> Json<Done> {
    Json(Done {
        service_name,
        action: action.to_string(),
        details,
    })
}
