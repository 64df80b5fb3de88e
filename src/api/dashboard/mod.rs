//! The dashboard `deployer serve` serves at `/`: services, a service's
//! releases and jobs with its actions, a job updating live, and the hosts.
//! Server-rendered HTML (maud), readable and usable without JavaScript
//! (each action asks on a page of its own); one small script of our own
//! (`assets/live.js`) follows a running job through its event stream.
//!
//! Who may look is checked here, as for the API (`guard.rs`): the `Host`
//! must name this server and an `Origin`, when sent, must be the server
//! itself. The login page takes the API token and sets a session cookie
//! (`HttpOnly`, `SameSite=Strict`); without a session every page redirects
//! to the login page. Every action is a POST carrying the session's CSRF
//! token. The session cookie never authenticates the JSON API.

mod actions;
mod pages;

use super::{Shared, guard};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const COOKIE: &str = "deployer_session";
/// How long a session lasts without being used again.
const SESSION_IDLE: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; the oldest go first.
const MAX_SESSIONS: usize = 1_000;

/// A logged-in browser.
#[derive(Clone, Debug)]
pub struct Session {
    /// Every form of the session carries it; a POST without it is refused.
    pub csrf: String,
    last_used: Instant,
}

/// The server's sessions, by the cookie's value.
#[derive(Default)]
pub struct Sessions(Mutex<HashMap<String, Session>>);

impl Sessions {
    fn open(&self) -> Option<(String, Session)> {
        let id = guard::random_token().ok()?.expose().to_string();
        let csrf = guard::random_token().ok()?.expose().to_string();
        let session = Session {
            csrf,
            last_used: Instant::now(),
        };
        let mut all = self.0.lock().unwrap();
        all.retain(|_, s| s.last_used.elapsed() < SESSION_IDLE);
        if all.len() >= MAX_SESSIONS
            && let Some(oldest) = all
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone())
        {
            all.remove(&oldest);
        }
        all.insert(id.clone(), session.clone());
        Some((id, session))
    }

    fn find(&self, id: &str) -> Option<Session> {
        let mut all = self.0.lock().unwrap();
        let s = all.get_mut(id)?;
        if s.last_used.elapsed() >= SESSION_IDLE {
            all.remove(id);
            return None;
        }
        s.last_used = Instant::now();
        Some(s.clone())
    }

    fn close(&self, id: &str) {
        self.0.lock().unwrap().remove(id);
    }
}

/// The dashboard's pages and actions, behind their own guard.
pub fn router(state: Shared) -> Router<Shared> {
    Router::new()
        .route("/", get(pages::services))
        .route("/hosts", get(pages::hosts))
        .route("/s/{service}", get(pages::service))
        .route("/s/{service}/confirm", get(actions::confirm))
        .route("/s/{service}/{action}", post(actions::act))
        .route("/jobs/{job}", get(pages::job))
        .route("/jobs/{job}/part", get(pages::job_part))
        .route("/jobs/{job}/events", get(super::deploy::events))
        .route("/login", get(pages::login).post(actions::login))
        .route("/logout", post(actions::logout))
        .route("/assets/style.css", get(style))
        .route("/assets/live.js", get(script))
        .layer(axum::middleware::from_fn_with_state(state, dash_guard))
}

async fn style() -> Response {
    asset("text/css", include_str!("assets/style.css"))
}

async fn script() -> Response {
    asset("text/javascript", include_str!("assets/live.js"))
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// The session cookie's value in a request, if any.
fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .map(str::to_string)
}

/// A plain page saying why a request was refused.
fn refused(status: StatusCode, why: &str) -> Response {
    (status, pages::message_page("Refused", why)).into_response()
}

/// Host and Origin as for the API; a session for everything but the login
/// page and the assets (pages redirect to the login page, actions are
/// refused); the session goes to the handler.
async fn dash_guard(State(state): State<Shared>, mut req: Request, next: Next) -> Response {
    let headers = req.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !guard::host_allowed(&state, host) {
        return refused(
            StatusCode::FORBIDDEN,
            "this server does not answer to that Host name (add it with --allow-host)",
        );
    }
    if let Some(origin) = headers.get(header::ORIGIN)
        && !guard::same_origin(origin.to_str().unwrap_or("null"), host)
    {
        return refused(StatusCode::FORBIDDEN, "cross-origin requests are refused");
    }
    let path = req.uri().path();
    if path == "/login" || path.starts_with("/assets/") {
        return next.run(req).await;
    }
    let session = session_id(req.headers()).and_then(|id| Some((state.sessions.find(&id)?, id)));
    match session {
        Some((session, id)) => {
            req.extensions_mut().insert(session);
            req.extensions_mut().insert(SessionId(id));
            next.run(req).await
        }
        None if req.method() == Method::GET || req.method() == Method::HEAD => {
            Redirect::to("/login").into_response()
        }
        None => refused(StatusCode::FORBIDDEN, "log in first"),
    }
}

/// The cookie value of the request's session.
#[derive(Clone, Debug)]
pub struct SessionId(pub String);

/// Whether a form's CSRF token is the session's.
fn csrf_ok(session: &Session, given: &str) -> bool {
    guard::constant_time_eq(session.csrf.as_bytes(), given.as_bytes())
}
