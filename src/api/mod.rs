//! `deployer serve`: the seed's HTTP API as a thin front end over the same
//! engine the CLI uses. Handlers parse and check a request, hand it to the
//! engine or the store, and map failures to status codes here, in one place.
//!
//! Who may call it is checked in one place (`guard.rs`): the bearer token
//! on every mutating request (there is always one), JSON bodies only, and
//! `Host` and `Origin` that name this server. Request bodies are capped at
//! 1 MiB.

mod cache;
mod dashboard;
mod deploy;
pub mod guard;
mod lifecycle;
mod listen;
mod metrics;
mod registry;
mod service;

use crate::input::config::DeployerConfig;
use crate::store::Store;
use crate::support::error::{Failure, FailureKind};
use crate::support::secret::Secret;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// How the server is set up.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub addr: SocketAddr,
    pub token: Option<Secret>,
    /// Whether reading endpoints need the token too.
    pub read_requires_token: bool,
    /// Directories a request's service_path must be inside.
    pub allowed_roots: Vec<PathBuf>,
    /// Deploy jobs run at once (jobs of one service wait for each other).
    pub workers: usize,
    /// Names the server answers to besides its addresses and `localhost`.
    pub allowed_hosts: Vec<String>,
    /// Deploys and rollbacks accepted and not yet finished, at most; more
    /// are answered 429.
    pub max_queued: usize,
}

/// What every handler shares.
pub struct AppState {
    pub config: DeployerConfig,
    /// The bearer token every mutating request must carry.
    pub token: Secret,
    pub state_dir: PathBuf,
    pub store: Store,
    pub options: ServeOptions,
    /// The jobs accepted to run in the background, their workers and
    /// live events (the engine's).
    pub queue: Arc<crate::engine::JobQueue>,
    pub started: std::time::Instant,
    /// The address the server answers on (for its own built-in registry).
    pub base_url: String,
    pub metrics: metrics::Metrics,
    /// Dependency probes, cached a few seconds.
    pub probes: service::Probes,
    /// Finished jobs' JSON, for `GET /deploy/{id}`.
    pub jobs: cache::JobCache,
    /// The dashboard's logged-in browsers.
    pub sessions: dashboard::Sessions,
}

pub type Shared = Arc<AppState>;

/// The body of every error answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: String,
    /// The request field the error is about, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// The API's OpenAPI 3.1 description, generated from the handlers' and
/// types' annotations.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "deployer", description = "Deploys services in six phases and rolls back on failure."),
    paths(
        deploy::create, deploy::pipeline, deploy::read, deploy::history, deploy::rollback, deploy::events,
        service::health, service::capabilities, service::state_counts, service::dependencies,
        service::message,
        registry::register, registry::event, registry::list, registry::one, registry::remove, registry::health,
        metrics::metrics,
        lifecycle::stop, lifecycle::start, lifecycle::restart, lifecycle::pause, lifecycle::resume,
    ),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
    }
}

async fn openapi() -> axum::Json<utoipa::openapi::OpenApi> {
    use utoipa::OpenApi;
    axum::Json(ApiDoc::openapi())
}

/// An error as the API shows it: a status and `{"error", "field"?}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            field: None,
        }
    }

    pub fn bad_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            field: Some(field.into()),
        }
    }
}

impl From<Failure> for ApiError {
    fn from(f: Failure) -> Self {
        let status = match f.kind {
            FailureKind::Invalid => StatusCode::BAD_REQUEST,
            FailureKind::NotFound => StatusCode::NOT_FOUND,
            FailureKind::Conflict | FailureKind::Locked => StatusCode::CONFLICT,
            FailureKind::Unreachable => StatusCode::BAD_GATEWAY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            status,
            message: f.message,
            field: f.field.map(str::to_string),
        }
    }
}

impl From<crate::engine::QueueFull> for ApiError {
    fn from(full: crate::engine::QueueFull) -> Self {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, full.to_string())
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
            field: self.field,
        };
        (self.status, axum::Json(body)).into_response()
    }
}

/// The whole API, and the dashboard beside it (with its own guard).
pub fn router(state: Shared) -> Router {
    Router::new()
        .merge(deploy::routes())
        .merge(lifecycle::routes())
        .merge(service::routes())
        .merge(registry::routes())
        .route("/openapi.json", axum::routing::get(openapi))
        .route("/metrics", axum::routing::get(metrics::metrics))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::guard,
        ))
        .merge(dashboard::router(state.clone()))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// How often `serve` looks for jobs whose deployer died and drains past
/// their end.
const RECOVERY_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Brings back the services whose jobs a previous server left unfinished
/// (`first`), then keeps sweeping: a job of a CLI deployer that died, a
/// drain whose drainer died (each under its service's lock; what it does
/// goes to the audit log).
async fn recover(state: Shared, first: Vec<String>) {
    let mut also = Vec::new();
    for id in &first {
        if let Ok(Some(job)) = state.store.job(id).await {
            also.push(job.service_name);
        }
    }
    // A service whose sweep failed (a host down) rests a minute.
    let mut resting: Vec<(String, std::time::Instant)> = Vec::new();
    loop {
        resting.retain(|(_, until)| *until > std::time::Instant::now());
        if let Ok(targets) = crate::hosting::site::targets(&state.config, &[]) {
            let engine = engine(&state, targets, std::time::Duration::ZERO);
            let skip: Vec<String> = resting.iter().map(|(s, _)| s.clone()).collect();
            let failed = engine
                .recover_all(
                    &std::mem::take(&mut also),
                    &skip,
                    &crate::render::output::Quiet,
                )
                .await;
            let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
            resting.extend(failed.into_iter().map(|s| (s, until)));
        }
        tokio::time::sleep(RECOVERY_EVERY).await;
    }
}

/// An engine writing to the server's store, recording its jobs as run by
/// `api@HOST`; its jobs run on the server's workers.
fn engine(
    state: &Shared,
    targets: Vec<crate::hosting::site::TargetSpec>,
    lock_wait: std::time::Duration,
) -> crate::engine::Engine {
    let host = crate::engine::actor()
        .split('@')
        .nth(1)
        .unwrap_or("localhost")
        .to_string();
    let engine = crate::engine::Engine::new(
        state.config.clone(),
        state.state_dir.clone(),
        lock_wait,
        targets,
    )
    .with_store(state.store.clone())
    .with_actor(format!("api@{host}"));
    state.queue.engine(engine)
}

/// Backs up every service (each run's results in the audit log, a run
/// that could not start too).
async fn snapshot(state: Shared) {
    if let Ok(targets) = crate::hosting::site::targets(&state.config, &[]) {
        let engine = engine(&state, targets, std::time::Duration::from_secs(600));
        engine.scheduled_snapshot().await;
    }
}

/// What a server found and set up as it started, for its front end to say.
pub struct Started {
    pub addr: SocketAddr,
    /// Jobs a previous server left running, now marked interrupted.
    pub interrupted: Vec<String>,
    /// Where the API token came from.
    pub token: guard::TokenSource,
}

/// Runs the server until interrupted. Jobs left running by a previous
/// server are marked interrupted first; `started` hears where it listens.
pub async fn serve(
    config: DeployerConfig,
    state_dir: PathBuf,
    options: ServeOptions,
    started: impl FnOnce(&Started),
) -> Result<(), Failure> {
    let (token, token_source) = guard::api_token(options.token.clone(), &state_dir)?;
    listen::raise_open_files_limit();
    let store = Store::open(&state_dir).await?;
    let interrupted = store.interrupt_all().await?;
    let listener = tokio::net::TcpListener::bind(options.addr)
        .await
        .map_err(|e| Failure::invalid(format!("cannot listen on {}: {e}", options.addr)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Failure::internal(e.to_string()))?;
    let mut config = config;
    let base_url = format!("http://{addr}");
    if config.registry_url.is_none() {
        // The built-in registry: the Register phase posts to this server,
        // with this server's token.
        config.registry_url = Some(base_url.clone());
        config.registry_token = Some(token.clone());
    }
    let state = Arc::new(AppState {
        config,
        token,
        state_dir,
        store,
        queue: crate::engine::JobQueue::new(options.workers, options.max_queued),
        options,
        started: std::time::Instant::now(),
        base_url,
        metrics: Default::default(),
        probes: Default::default(),
        jobs: Default::default(),
        sessions: Default::default(),
    });
    tokio::spawn(recover(state.clone(), interrupted.clone()));
    if let Some(at) = &state.config.api.snapshot_at {
        let daily = crate::engine::Daily::parse(at)?;
        let state = state.clone();
        tokio::spawn(daily.every_day(move || snapshot(state.clone())));
    }
    started(&Started {
        addr,
        interrupted,
        token: token_source,
    });
    listen::serve(listener, router(state), async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    Ok(())
}
