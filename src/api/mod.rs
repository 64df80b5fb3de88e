//! `deployer serve`: the seed's HTTP API as a thin front end over the same
//! engine the CLI uses. Handlers parse and check a request, hand it to the
//! engine or the store, and map failures to status codes here, in one place.
//!
//! Mutating endpoints need `Authorization: Bearer TOKEN` (compared in
//! constant time) when a token is configured; without one the server only
//! listens on loopback. Request bodies are capped at 1 MiB.

mod deploy;
mod metrics;
mod registry;
mod service;

use crate::config::DeployerConfig;
use crate::error::{Failure, FailureKind};
use crate::secret::Secret;
use crate::store::Store;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::{Semaphore, broadcast};

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
}

/// What every handler shares.
pub struct AppState {
    pub config: DeployerConfig,
    pub state_dir: PathBuf,
    pub store: Store,
    pub options: ServeOptions,
    pub workers: Arc<Semaphore>,
    /// Live event streams of running jobs, by job id.
    pub events: Mutex<HashMap<String, broadcast::Sender<crate::engine::StreamEvent>>>,
    pub started: std::time::Instant,
    /// The address the server answers on (for its own built-in registry).
    pub base_url: String,
    pub metrics: metrics::Metrics,
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
        deploy::create, deploy::read, deploy::history, deploy::rollback, deploy::events,
        service::health, service::capabilities, service::state_counts, service::dependencies,
        service::message,
        registry::register, registry::list, registry::one, registry::remove, registry::health,
        metrics::metrics,
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

/// Compares two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorized(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(token) = &state.options.token else {
        return true;
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    constant_time_eq(given.as_bytes(), token.expose().as_bytes())
}

/// Checks the bearer token on mutating requests (and on reads when the
/// server is set up so).
async fn auth(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let mutating =
        req.method() != axum::http::Method::GET && req.method() != axum::http::Method::HEAD;
    let needs = mutating || state.options.read_requires_token;
    if needs && !authorized(&state, req.headers()) {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer TOKEN)",
        )
        .into_response();
    }
    next.run(req).await
}

/// The whole API.
pub fn router(state: Shared) -> Router {
    Router::new()
        .merge(deploy::routes())
        .merge(service::routes())
        .merge(registry::routes())
        .route("/openapi.json", axum::routing::get(openapi))
        .route("/metrics", axum::routing::get(metrics::metrics))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// What a server found and set up as it started, for its front end to say.
pub struct Started {
    pub addr: SocketAddr,
    /// Jobs a previous server left running, now marked interrupted.
    pub interrupted: Vec<String>,
    /// Whether mutating endpoints are open (no token; loopback only).
    pub open: bool,
}

/// Runs the server until interrupted. Jobs left running by a previous
/// server are marked interrupted first; `started` hears where it listens.
pub async fn serve(
    config: DeployerConfig,
    state_dir: PathBuf,
    options: ServeOptions,
    started: impl FnOnce(&Started),
) -> Result<(), Failure> {
    if options.token.is_none() && !options.addr.ip().is_loopback() {
        return Err(Failure::invalid(format!(
            "refusing to listen on {} without an API token: set DEPLOYER_API_TOKEN (or api_token in \
             deployer.toml), or listen on 127.0.0.1",
            options.addr
        )));
    }
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
        config.registry_token = options.token.clone();
    }
    let state = Arc::new(AppState {
        config,
        state_dir,
        store,
        workers: Arc::new(Semaphore::new(options.workers.max(1))),
        options,
        events: Mutex::new(HashMap::new()),
        started: std::time::Instant::now(),
        base_url,
        metrics: Default::default(),
    });
    started(&Started {
        addr,
        interrupted,
        open: state.options.token.is_none(),
    });
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| Failure::internal(e.to_string()))
}
