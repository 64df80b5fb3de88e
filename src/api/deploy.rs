//! `/deploy`: submit a deploy (202 and a job id, the job already on disk),
//! read a job, roll back, a service's history, and a job's live events.

use super::{ApiError, Shared};
use crate::engine::{Engine, StreamEvent};
use crate::input::plan::{DeployRequest, Plan};
use crate::model::{Job, JobView, PhaseStatus};
use crate::support::error::FailureKind;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::routing::{get, post};
use std::time::Duration;
use tokio::sync::broadcast;

pub fn routes() -> axum::Router<Shared> {
    axum::Router::new()
        .route("/deploy", post(create))
        .route("/pipeline", post(pipeline))
        .route("/deploy/history/{service_name}", get(history))
        .route("/deploy/{job_id}", get(read))
        .route("/deploy/{job_id}/rollback", post(rollback))
        .route("/deploy/{job_id}/events", get(events))
}

/// The answer to an accepted deploy: the job is stored and queued.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Accepted {
    pub deploy_job_id: String,
    pub service_name: String,
    /// Always `pending`: the job waits for a worker and the service's lock.
    pub status: String,
    #[serde(serialize_with = "crate::model::time_format::ser")]
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// The answer to a rollback.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct RolledBack {
    pub status: String,
    pub service_name: String,
    pub rollback_job_id: String,
    /// The release now current.
    pub release: Option<String>,
    /// The release that was current before.
    pub from_release: Option<String>,
}

/// How long a queued job waits for another deploy of its service.
const LOCK_WAIT: Duration = Duration::from_secs(1800);

/// Parses a request body, naming the field a problem is in.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.inner().to_string();
        let field = if path == "." {
            // "missing field `x`" names the field in the message.
            msg.split('`').nth(1).unwrap_or("body").to_string()
        } else {
            path
        };
        ApiError::bad_field(field, format!("invalid request: {msg}"))
    })
}

/// Submit a service for deployment.
#[utoipa::path(post, path = "/deploy", tag = "deploy",
    request_body = DeployRequest,
    responses(
        (status = 202, description = "Accepted; the job is stored", body = Accepted),
        (status = 400, description = "Invalid input; `field` names it", body = super::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = super::ErrorBody),
        (status = 415, description = "Not JSON (Content-Type: application/json)", body = super::ErrorBody),
        (status = 413, description = "Body over 1 MiB"),
        (status = 429, description = "The queue of deploys is full", body = super::ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<Shared>,
    body: Bytes,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let req: DeployRequest = parse(&body)?;
    submit(state, req, None).await
}

/// A pipeline run's request: a deploy request and the change's intent.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[allow(dead_code)] // Only its schema is used; the body is read in two parts.
pub struct PipelineRequest {
    /// What the change is for; given to each stage.
    intent: Option<String>,
    #[serde(flatten)]
    request: DeployRequest,
}

/// Run the configured pipeline stages (`[[pipeline]]`: a verifier, an
/// auto-fixer, commands), then deploy and register. Stages are recorded as
/// steps of the job's Validation phase; a failed stage fails the job
/// (`failure` = `pipeline`) before Transfer.
#[utoipa::path(post, path = "/pipeline", tag = "deploy",
    request_body = PipelineRequest,
    responses(
        (status = 202, description = "Accepted; the job is stored", body = Accepted),
        (status = 400, description = "Invalid input, or no stages configured; `field` names it", body = super::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = super::ErrorBody),
        (status = 415, description = "Not JSON (Content-Type: application/json)", body = super::ErrorBody),
        (status = 413, description = "Body over 1 MiB"),
        (status = 429, description = "The queue of deploys is full", body = super::ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn pipeline(
    State(state): State<Shared>,
    body: Bytes,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let mut value: serde_json::Value = parse(&body)?;
    let intent = match value.as_object_mut().and_then(|o| o.remove("intent")) {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s),
        Some(_) => return Err(ApiError::bad_field("intent", "intent must be a string")),
    };
    let req: DeployRequest = parse(value.to_string().as_bytes())?;
    submit(state, req, Some(intent)).await
}

/// Accepts a deploy (with a pipeline run's intent, for `/pipeline`): the
/// job is stored before the 202, then runs in the background.
pub(super) async fn submit(
    state: Shared,
    req: DeployRequest,
    pipeline: Option<Option<String>>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    check_allowed(&state, &req)?;
    let place = state.queue.place()?;
    crate::input::plan::check_requested_secrets(&req.secrets, &state.config)?;
    let secret_env = crate::input::plan::listed_secrets_only(&state.config);
    let mut req = req;
    // A git ref: the release is that commit's tree, exported until the
    // job ends.
    let exported = match req.git_ref.clone() {
        Some(reference) => {
            let dir = req.service_path.clone();
            let exported = tokio::task::spawn_blocking(move || {
                crate::integrations::git::export_ref(&dir, &reference, None)
            })
            .await
            .map_err(|e| ApiError::from(crate::support::error::Failure::internal(e.to_string())))?
            .map_err(|e| ApiError::bad_field("git_ref", e.to_string()))?;
            Some(exported)
        }
        None => None,
    };
    let git = exported.as_ref().map(|e| req.from_commit(e));
    let mut plan = Plan::build(&req, &state.config, &secret_env)?;
    plan.git = git;
    if let Some(intent) = pipeline {
        plan = plan.with_pipeline(intent, &state.config, &secret_env)?;
    }
    let engine = engine_for(&state, &plan.hosts)?;
    // On disk before the 202: a crash from here on leaves a job to find.
    let job = engine.accept(&plan).await?;
    let accepted = Accepted {
        deploy_job_id: job.deploy_job_id.clone(),
        service_name: job.service_name.clone(),
        status: "pending".into(),
        created_at: job.started_at,
    };
    state.metrics.job_started();
    let ended = {
        let state = state.clone();
        move |job: &Job| {
            state.metrics.job_finished(job);
            state.jobs.ended(job);
            drop(exported);
        }
    };
    state.queue.run(engine, plan, job, place, ended);
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

/// An engine for a request's hosts, writing to the server's store as
/// `api@HOST`.
fn engine_for(state: &Shared, hosts: &[String]) -> Result<Engine, ApiError> {
    let targets = crate::hosting::site::targets(&state.config, hosts)?;
    Ok(super::engine(state, targets, LOCK_WAIT))
}

/// The service path must be inside one of the allowed roots.
fn check_allowed(state: &Shared, req: &DeployRequest) -> Result<(), ApiError> {
    let roots = &state.options.allowed_roots;
    let path = &req.service_path;
    let canonical = path.canonicalize().map_err(|_| {
        ApiError::bad_field(
            "service_path",
            format!("service path {} does not exist", path.display()),
        )
    })?;
    if roots.iter().any(|r| canonical.starts_with(r)) {
        Ok(())
    } else if roots.is_empty() {
        Err(ApiError::bad_field(
            "service_path",
            "no directory is allowed for deploys: start the server with --allow-root DIR",
        ))
    } else {
        Err(ApiError::bad_field(
            "service_path",
            format!(
                "service path {} is outside the allowed roots ({})",
                path.display(),
                roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))
    }
}

/// A deploy job with its phases.
#[utoipa::path(get, path = "/deploy/{job_id}", tag = "deploy",
    params(("job_id" = String, Path, description = "deploy-…")),
    responses(
        (status = 200, body = JobView),
        (status = 404, description = "No such job", body = super::ErrorBody),
    ))]
pub async fn read(
    State(state): State<Shared>,
    Path(job_id): Path<String>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let json = |body: Bytes| {
        let header = [(axum::http::header::CONTENT_TYPE, "application/json")];
        (header, body).into_response()
    };
    let body = job_json(&state, &job_id)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no job '{job_id}'")))?;
    Ok(json(body))
}

/// A job as JSON: from the cache of finished jobs, else read and offered
/// to it.
async fn job_json(state: &Shared, id: &str) -> Result<Option<Bytes>, ApiError> {
    if let Some(body) = state.jobs.get(id) {
        return Ok(Some(body));
    }
    let Some(job) = state.store.job(id).await? else {
        return Ok(None);
    };
    let body = Bytes::from(
        serde_json::to_vec(&job)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?,
    );
    state.jobs.offer(&job, &body);
    Ok(Some(body))
}

/// A service's jobs, newest first.
#[utoipa::path(get, path = "/deploy/history/{service_name}", tag = "deploy",
    params(("service_name" = String, Path)),
    responses(
        (status = 200, body = Vec<JobView>),
        (status = 400, description = "Invalid name", body = super::ErrorBody),
        (status = 404, description = "Never deployed", body = super::ErrorBody),
    ))]
pub async fn history(
    State(state): State<Shared>,
    Path(service): Path<String>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    crate::input::plan::validate_name(&service)?;
    // The ids from the database (another deployer may have added one),
    // each job from the cache of finished jobs when it is there.
    let ids = state.store.history_ids(&service, 100).await?;
    if ids.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no deploys of service '{service}'"),
        ));
    }
    let mut body = Vec::with_capacity(ids.len() * 4096);
    body.push(b'[');
    for id in &ids {
        if let Some(job) = job_json(&state, id).await? {
            if body.len() > 1 {
                body.push(b',');
            }
            body.extend_from_slice(&job);
        }
    }
    body.push(b']');
    let header = [(axum::http::header::CONTENT_TYPE, "application/json")];
    Ok((header, Bytes::from(body)).into_response())
}

/// Roll the job's service back to its previous release.
#[utoipa::path(post, path = "/deploy/{job_id}/rollback", tag = "deploy",
    params(("job_id" = String, Path)),
    responses(
        (status = 200, body = RolledBack),
        (status = 401, description = "Missing or wrong token", body = super::ErrorBody),
        (status = 415, description = "Not JSON (Content-Type: application/json)", body = super::ErrorBody),
        (status = 404, description = "No such job", body = super::ErrorBody),
        (status = 409, description = "No previous version", body = super::ErrorBody),
        (status = 429, description = "The queue of deploys is full", body = super::ErrorBody),
        (status = 500, description = "The rollback failed", body = super::ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn rollback(
    State(state): State<Shared>,
    Path(job_id): Path<String>,
) -> Result<Json<RolledBack>, ApiError> {
    let job = state
        .store
        .job(&job_id)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no job '{job_id}'")))?;
    let _place = state.queue.place()?;
    let engine = engine_for(&state, &[])?;
    let quiet = crate::render::output::Quiet;
    let done = engine
        .rollback(&job.service_name, None, &quiet)
        .await
        .map_err(|f| {
            // The job exists; a service without releases has nothing to go back to.
            if f.kind == FailureKind::NotFound {
                ApiError::new(StatusCode::CONFLICT, f.message)
            } else {
                ApiError::from(f)
            }
        })?;
    if let Some(error) = done.state.error() {
        return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error));
    }
    Ok(Json(RolledBack {
        status: "rolled_back".into(),
        service_name: done.service_name,
        rollback_job_id: done.deploy_job_id,
        release: done.release,
        from_release: done.previous_release,
    }))
}

/// A job's progress as Server-Sent Events: each `data:` is a JSON object
/// with `event` = phase_started | phase | note | progress | done.
#[utoipa::path(get, path = "/deploy/{job_id}/events", tag = "deploy",
    params(("job_id" = String, Path)),
    responses(
        (status = 200, description = "An event stream", content_type = "text/event-stream", body = String),
        (status = 404, description = "No such job", body = super::ErrorBody),
    ))]
pub async fn events(
    State(state): State<Shared>,
    Path(job_id): Path<String>,
) -> Result<
    Sse<impl futures_util::Stream<Item = Result<SseEvent, std::convert::Infallible>>>,
    ApiError,
> {
    let rx = state.queue.subscribe(&job_id);
    let job = state
        .store
        .job(&job_id)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no job '{job_id}'")))?;
    // First what has happened so far, then what happens next.
    let mut first: Vec<StreamEvent> = job
        .phases
        .iter()
        .filter(|p| p.status() != PhaseStatus::Pending)
        .map(|p| StreamEvent::Phase {
            host: None,
            phase: p.view(),
        })
        .collect();
    if rx.is_none() {
        first.push(StreamEvent::Done { job: Box::new(job) });
    }
    let live = futures_util::stream::unfold(rx, |rx| async move {
        let mut rx = rx?;
        loop {
            match rx.recv().await {
                Ok(event) => {
                    let next = (!event.is_done()).then_some(rx);
                    return Some((event, next));
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    use futures_util::StreamExt;
    let stream = futures_util::stream::iter(first).chain(live).map(|event| {
        Ok(SseEvent::default().data(serde_json::to_string(&event).unwrap_or_default()))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
