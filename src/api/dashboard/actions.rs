//! What the dashboard does: log in and out, and a service's actions, each
//! confirmed on a page of its own (or inline by the script) and posted with
//! the session's CSRF token. Rollbacks and redeploys are jobs like any
//! other, shown on their job page.

use super::pages::{error_page, layout, login_page};
use super::{COOKIE, SESSION_IDLE, Session, SessionId, csrf_ok, refused};
use crate::api::{ApiError, Shared, guard};
use crate::input::plan::DeployRequest;
use crate::model::ReleaseStatus;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use maud::html;

/// An action's words: the button, the question, what it does.
fn words(action: &str) -> Option<(&'static str, &'static str)> {
    Some(match action {
        "rollback" => (
            "Yes, roll back",
            "The release runs again on every host of the service, as `deployer rollback` does; the current one stops.",
        ),
        "redeploy" => (
            "Yes, redeploy",
            "The service's current source directory is deployed again with its manifest, as a new job.",
        ),
        "restart" => (
            "Yes, restart",
            "The current release stops and starts again, health-checked.",
        ),
        "stop" => (
            "Yes, stop",
            "The service stops answering on every host until it is started.",
        ),
        "start" => (
            "Yes, start",
            "The current release starts again, health-checked.",
        ),
        _ => return None,
    })
}

#[derive(serde::Deserialize)]
pub(super) struct ConfirmQuery {
    action: String,
    release: Option<String>,
}

/// `/s/NAME/confirm?action=…`: the question, and the form that acts.
pub(super) async fn confirm(
    Extension(session): Extension<Session>,
    Path(service): Path<String>,
    Query(q): Query<ConfirmQuery>,
) -> Response {
    if let Err(f) = crate::input::plan::validate_name(&service) {
        return error_page(f.into());
    }
    let Some((button, what)) = words(&q.action) else {
        return error_page(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no action '{}'", q.action),
        ));
    };
    let release = q
        .release
        .filter(|r| crate::hosting::release::is_release_id(r));
    if q.action == "rollback" && release.is_none() {
        return error_page(ApiError::new(
            StatusCode::BAD_REQUEST,
            "which release? (release=…)",
        ));
    }
    let question = match &release {
        Some(r) => format!("Roll {service} back to release {r}?"),
        None => format!("{} {service}?", capitalized(&q.action)),
    };
    let body = html! {
        h1 { (question) }
        p { (what) }
        form method="post" action={"/s/" (service) "/" (q.action)} {
            input type="hidden" name="csrf" value=(session.csrf);
            @if let Some(r) = &release { input type="hidden" name="release" value=(r); }
            button #confirm type="submit" { (button) }
            " " a href={"/s/" (service)} { "Cancel" }
        }
    };
    layout(&question, Some(&session), body).into_response()
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

#[derive(serde::Deserialize)]
pub(super) struct ActionForm {
    #[serde(default)]
    csrf: String,
    release: Option<String>,
}

/// `POST /s/NAME/ACTION`.
pub(super) async fn act(
    State(state): State<Shared>,
    Extension(session): Extension<Session>,
    Path((service, action)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Response {
    if !csrf_ok(&session, &form.csrf) {
        return refused(
            StatusCode::FORBIDDEN,
            "the form's CSRF token is missing or wrong: reload the page and try again",
        );
    }
    if let Err(f) = crate::input::plan::validate_name(&service) {
        return error_page(f.into());
    }
    match run(&state, &service, &action, form.release.as_deref()).await {
        Ok(to) => Redirect::to(&to).into_response(),
        Err(e) => error_page(e),
    }
}

/// Runs an action; where the browser goes next.
async fn run(
    state: &Shared,
    service: &str,
    action: &str,
    release: Option<&str>,
) -> Result<String, ApiError> {
    let targets = crate::hosting::site::targets(&state.config, &[])?;
    let engine = crate::api::engine(state, targets, std::time::Duration::from_secs(30));
    let said = |text: String| {
        let q: String = url_encode(&text);
        format!("/s/{service}?said={q}")
    };
    match action {
        "rollback" => {
            let release = release
                .filter(|r| crate::hosting::release::is_release_id(r))
                .ok_or_else(|| {
                    ApiError::new(StatusCode::BAD_REQUEST, "which release? (release=…)")
                })?;
            let _place = state.queue.place()?;
            let job = engine
                .rollback(service, Some(release), &crate::render::output::Quiet)
                .await?;
            state.jobs.ended(&job);
            Ok(format!("/jobs/{}", job.deploy_job_id))
        }
        "stop" => Ok(said(engine.stop(service).await?.to_string())),
        "start" => Ok(said(engine.start(service).await?)),
        "restart" => Ok(said(engine.restart(service).await?)),
        "redeploy" => {
            let req = redeploy_request(state, service).await?;
            let (_, accepted) = crate::api::deploy::submit(state.clone(), req, None).await?;
            Ok(format!("/jobs/{}", accepted.deploy_job_id))
        }
        other => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no action '{other}'"),
        )),
    }
}

/// The request that deploys the current release's source again, with the
/// manifest's settings and the current release's port, method and secrets.
async fn redeploy_request(state: &Shared, service: &str) -> Result<DeployRequest, ApiError> {
    let releases = state.store.releases(service).await?;
    let current = releases
        .iter()
        .find(|r| r.status == ReleaseStatus::Current)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                format!("service '{service}' has no current release"),
            )
        })?;
    let job =
        state.store.job(&current.job_id).await?.ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, "the current release's job is gone")
        })?;
    let spec = &current.spec;
    Ok(DeployRequest {
        service_path: job.service_path.into(),
        service_name: Some(service.to_string()),
        droplet_id: job.droplet_id,
        service_port: spec.proxy.is_none().then_some(spec.port),
        proxy_port: spec.proxy.as_ref().map(|p| p.public_port),
        deployment_method: Some(spec.runtime.as_str().to_string()),
        secrets: spec.secret_names.clone(),
        replicas: spec.swarm.as_ref().map(|s| s.replicas),
        ..DeployRequest::default()
    })
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(serde::Deserialize)]
pub(super) struct LoginForm {
    #[serde(default)]
    token: String,
}

/// `POST /login`: the right token opens a session.
pub(super) async fn login(State(state): State<Shared>, Form(form): Form<LoginForm>) -> Response {
    if !guard::constant_time_eq(
        form.token.trim().as_bytes(),
        state.token.expose().as_bytes(),
    ) {
        return (
            StatusCode::UNAUTHORIZED,
            login_page(Some("That is not the server's token.")),
        )
            .into_response();
    }
    let Some((id, _)) = state.sessions.open() else {
        return refused(
            StatusCode::INTERNAL_SERVER_ERROR,
            "could not make a session",
        );
    };
    let cookie = format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_IDLE.as_secs()
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

/// `POST /logout`.
pub(super) async fn logout(
    State(state): State<Shared>,
    Extension(session): Extension<Session>,
    Extension(SessionId(id)): Extension<SessionId>,
    Form(form): Form<ActionForm>,
) -> Response {
    if !csrf_ok(&session, &form.csrf) {
        return refused(
            StatusCode::FORBIDDEN,
            "the form's CSRF token is missing or wrong",
        );
    }
    state.sessions.close(&id);
    let gone = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    ([(header::SET_COOKIE, gone)], Redirect::to("/login")).into_response()
}
