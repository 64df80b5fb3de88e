//! The dashboard's pages, in the CLI's words: services, a service, a job,
//! hosts, and the login page.

use super::Session;
use crate::api::{ApiError, Shared};
use crate::engine::Snapshot;
use crate::model::{Job, PhaseStatus, PhaseView, Release, ReleaseStatus};
use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};

/// Every page: a header with the navigation, then `body`.
pub(super) fn layout(title: &str, session: Option<&Session>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · deployer" }
                link rel="stylesheet" href="/assets/style.css";
                script src="/assets/live.js" defer {}
            }
            body {
                header {
                    nav aria-label="Main" {
                        a.brand href="/" { "deployer" }
                        @if let Some(s) = session {
                            a href="/" { "Services" }
                            a href="/hosts" { "Hosts" }
                            form.inline method="post" action="/logout" {
                                input type="hidden" name="csrf" value=(s.csrf);
                                button type="submit" { "Log out" }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A page that only says something (a refusal, an error).
pub(super) fn message_page(title: &str, text: &str) -> Markup {
    layout(title, None, html! { h1 { (title) } p.message { (text) } })
}

pub(super) fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// ✓ / ✗ / … with words for screen readers.
fn mark(status: &str) -> Markup {
    let (sign, class) = match status {
        "success" | "completed" | "healthy" => ("✓", "ok"),
        "failed" | "unhealthy" => ("✗", "bad"),
        "running" => ("…", "run"),
        "pending" => ("○", "skip"),
        _ => ("–", "skip"),
    };
    html! { span.nowrap { span class={"mark " (class)} aria-hidden="true" { (sign) } " " span.status { (status) } } }
}

pub(super) fn error_page(e: ApiError) -> Response {
    (e.status, message_page("Error", &e.message)).into_response()
}

/// The monitor's look at every service and host, or the error page.
async fn snapshot(state: &Shared) -> Result<Snapshot, Response> {
    let look = async {
        let targets = crate::hosting::site::targets(&state.config, &[])?;
        let engine = crate::api::engine(state, targets, std::time::Duration::from_secs(5));
        Ok::<_, ApiError>(engine.monitor().await?)
    };
    look.await.map_err(error_page)
}

/// `/`: every deployed service with its current release, health on each
/// host, and its last job.
pub(super) async fn services(
    State(state): State<Shared>,
    Extension(session): Extension<Session>,
) -> Response {
    let snap = match snapshot(&state).await {
        Ok(s) => s,
        Err(page) => return page,
    };
    let mut names: Vec<&str> = snap.services.iter().map(|l| l.service.as_str()).collect();
    names.dedup();
    let mut rows = Vec::new();
    for name in names {
        let releases = state.store.releases(name).await.unwrap_or_default();
        let current = releases
            .iter()
            .find(|r| r.status == ReleaseStatus::Current)
            .cloned();
        let last = state
            .store
            .history(name, 1)
            .await
            .ok()
            .and_then(|mut j| j.pop());
        let lines: Vec<_> = snap.services.iter().filter(|l| l.service == name).collect();
        rows.push(html! {
            tr {
                th scope="row" { a href={"/s/" (name)} { (name) } }
                td { @if let Some(r) = &current { code { (r.id) } (commit(r)) } @else { "-" } }
                td { @if let Some(r) = &current { (r.spec.runtime.as_str()) } }
                td {
                    ul.plain { @for l in &lines {
                        li {
                            (mark(if l.check.healthy { "healthy" } else { "unhealthy" }))
                            " on " (l.check.host)
                            @if let Some(ms) = l.check.ms { ", " (ms) " ms" }
                            @if let Some(r) = &l.check.replicas { " · " (r) " tasks" }
                        }
                    } }
                }
                td { @if let Some(j) = &last {
                    a href={"/jobs/" (j.deploy_job_id)} { (j.kind.as_str()) } " "
                    (mark(j.state.status().as_str())) br;
                    small { (when(j.started_at)) }
                } }
            }
        });
    }
    let body = html! {
        h1 { "Services" }
        @if rows.is_empty() {
            p { "Nothing is deployed yet: " code { "deployer deploy PATH" } " or " code { "POST /deploy" } "." }
        } @else {
            table {
                thead { tr { th scope="col" { "Service" } th scope="col" { "Release" } th scope="col" { "Method" }
                    th scope="col" { "Health" } th scope="col" { "Last job" } } }
                tbody { @for r in &rows { (r) } }
            }
        }
        p { small { "Looked at " (when(snap.at)) "." } }
    };
    layout("Services", Some(&session), body).into_response()
}

fn commit(r: &Release) -> Markup {
    html! { @if let Some(c) = &r.commit {
        br; small { "commit " code { (c.sha.chars().take(10).collect::<String>()) } " " (c.subject) }
    } }
}

/// `/s/NAME`: releases, jobs, hosts and the actions.
pub(super) async fn service(
    State(state): State<Shared>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    if let Err(f) = crate::input::plan::validate_name(&name) {
        return error_page(f.into());
    }
    let releases = state.store.releases(&name).await.unwrap_or_default();
    if releases.is_empty() {
        return error_page(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no service '{name}'"),
        ));
    }
    let jobs = state.store.history(&name, 50).await.unwrap_or_default();
    let hosts = state.store.service_hosts(&name).await.unwrap_or_default();
    let confirm = |action: &str| format!("/s/{name}/confirm?action={action}");
    let body = html! {
        h1 { "Service " (name) }
        @if let Some(said) = q.get("said") { p.message role="status" { (said) } }
        section aria-labelledby="actions" {
            h2 #actions { "Actions" }
            p.actions {
                a.button href=(confirm("redeploy")) { "Redeploy the current source" }
                a.button href=(confirm("restart")) { "Restart" }
                a.button href=(confirm("stop")) { "Stop" }
                a.button href=(confirm("start")) { "Start" }
            }
        }
        section aria-labelledby="releases" {
            h2 #releases { "Releases" }
            table {
                thead { tr { th scope="col" { "Release" } th scope="col" { "Status" } th scope="col" { "Made" }
                    th scope="col" { "Method" } th scope="col" { span.visually-hidden { "Action" } } } }
                tbody { @for r in &releases { tr {
                    td { code { (r.id) } (commit(r)) }
                    td { (r.status.as_str()) }
                    td { (when(r.created_at)) }
                    td { (r.spec.runtime.as_str()) }
                    td { @if r.status == ReleaseStatus::Previous {
                        a.button href={(confirm("rollback")) "&release=" (r.id)} { "Roll back to this release" }
                    } }
                } } }
            }
        }
        section aria-labelledby="hosts" {
            h2 #hosts { "Hosts" }
            ul { @for h in &hosts { li { (h) } } @if hosts.is_empty() { li { "local" } } }
        }
        section aria-labelledby="jobs" {
            h2 #jobs { "Jobs" }
            (jobs_table(&jobs))
        }
    };
    layout(&name, Some(&session), body).into_response()
}

fn jobs_table(jobs: &[Job]) -> Markup {
    html! { table {
        thead { tr { th scope="col" { "Job" } th scope="col" { "Kind" } th scope="col" { "Status" }
            th scope="col" { "Release" } th scope="col" { "Started" } th scope="col" { "Took" } } }
        tbody { @for j in jobs { tr {
            td { a href={"/jobs/" (j.deploy_job_id)} { code { (j.deploy_job_id) } } }
            td { (j.kind.as_str()) }
            td { (mark(j.state.status().as_str())) }
            td { code { (j.release.as_deref().unwrap_or("-")) } }
            td { (when(j.started_at)) }
            td { @if let Some(s) = j.duration_seconds() { (format!("{s:.1} s")) } }
        } } }
    } }
}

/// `/jobs/ID`: the job, live while it runs.
pub(super) async fn job(
    State(state): State<Shared>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    let job = match find_job(&state, &id).await {
        Ok(j) => j,
        Err(e) => return error_page(e),
    };
    let live = matches!(job.state.status().as_str(), "pending" | "running");
    let body = html! {
        h1 { (job.kind.as_str()) " of " a href={"/s/" (job.service_name)} { (job.service_name) } }
        div #job data-job=(job.deploy_job_id) data-live=(live) aria-live="polite" {
            (job_part_markup(&job))
        }
    };
    layout(&format!("Job {id}"), Some(&session), body).into_response()
}

/// `/jobs/ID/part`: the job's body alone, for the live page to swap in.
pub(super) async fn job_part(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    match find_job(&state, &id).await {
        Ok(job) => job_part_markup(&job).into_response(),
        Err(e) => error_page(e),
    }
}

async fn find_job(state: &Shared, id: &str) -> Result<Job, ApiError> {
    state
        .store
        .job(id)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no job '{id}'")))
}

fn job_part_markup(job: &Job) -> Markup {
    let status = job.state.status().as_str();
    let rollback = match &job.state {
        crate::model::JobState::Failed { rollback, .. } => rollback.clone(),
        _ => None,
    };
    html! {
        dl.facts {
            dt { "Job" } dd { code { (job.deploy_job_id) } }
            dt { "Status" } dd #job-status data-status=(status) { (mark(status)) }
            dt { "Release" } dd { code { (job.release.as_deref().unwrap_or("-")) } }
            @if let Some(p) = &job.previous_release { dt { "Previous" } dd { code { (p) } } }
            dt { "Method" } dd { (job.deployment_method) }
            dt { "Started" } dd { (when(job.started_at)) " by " (job.actor) }
            @if let Some(s) = job.duration_seconds() { dt { "Took" } dd { (format!("{s:.2} s")) } }
            @if let Some(c) = &job.commit { dt { "Commit" } dd { code { (c.sha) } " " (c.subject) } }
        }
        @if let Some(e) = job.state.error() { p.error role="alert" { (e) } }
        table.phases {
            thead { tr { th scope="col" { "Phase" } th scope="col" { "Status" } th scope="col" { "Took" } th scope="col" { "Details" } } }
            @for p in job.phases.iter().map(|p| p.view()) { (phase_rows(&p)) }
        }
        @if let Some(rb) = rollback {
            section.rollback aria-labelledby="rollback" {
                h2 #rollback { "Rollback" }
                p { (mark(if rb.success { "success" } else { "failed" })) " from " code { (rb.from_release) }
                    @if let Some(to) = &rb.to_release { " to " code { (to) } } }
                p { (rb.details) }
            }
        }
    }
}

fn phase_rows(p: &PhaseView) -> Markup {
    let name = p.phase.as_str();
    let took = |ms: Option<i64>| ms.map(|m| format!("{m} ms")).unwrap_or_default();
    html! {
        tr.phase data-phase=(name) data-status=(p.status.as_str()) {
            th scope="row" { (name) }
            td.st { (mark(p.status.as_str())) }
            td.took { (took(p.duration_ms)) }
            td.details { (p.details) @if let Some(e) = &p.error { pre.error { (e) } } }
        }
        @for s in &p.steps { @if s.status != PhaseStatus::Pending {
            tr.step {
                td { span.indent { (s.step) } }
                td { (mark(s.status.as_str())) }
                td { (took(s.duration_ms)) }
                td { (s.details) @if let Some(e) = &s.error { pre.error { (e) } } }
            }
        } }
    }
}

/// `/hosts`: each host's CPU, memory and disk, and the services on it.
pub(super) async fn hosts(
    State(state): State<Shared>,
    Extension(session): Extension<Session>,
) -> Response {
    let snap = match snapshot(&state).await {
        Ok(s) => s,
        Err(page) => return page,
    };
    let rows: Vec<Vec<String>> = snap
        .hosts
        .iter()
        .map(crate::render::output::monitor::host_row)
        .collect();
    let body = html! {
        h1 { "Hosts" }
        table {
            thead { tr { th scope="col" { "Host" } th scope="col" { "CPU" } th scope="col" { "Memory" }
                th scope="col" { "Disk" } th scope="col" { "Services" } } }
            tbody { @for (h, row) in snap.hosts.iter().zip(&rows) { tr {
                th scope="row" { (row[0]) }
                @for cell in &row[1..] { td { (cell) } }
                td { ul.plain { @for l in snap.services.iter().filter(|l| l.check.host == h.host) {
                    li { (mark(if l.check.healthy { "healthy" } else { "unhealthy" })) " "
                        a href={"/s/" (l.service)} { (l.service) } }
                } } }
            } } }
        }
        p { small { "Looked at " (when(snap.at)) "." } }
    };
    layout("Hosts", Some(&session), body).into_response()
}

/// `/login`: the token, once.
pub(super) async fn login() -> Markup {
    login_page(None)
}

pub(super) fn login_page(error: Option<&str>) -> Markup {
    layout(
        "Log in",
        None,
        html! {
            h1 { "Log in" }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form method="post" action="/login" {
                label for="token" { "API token" }
                input #token type="password" name="token" autocomplete="current-password" required autofocus;
                p { small { "The server's token: DEPLOYER_API_TOKEN, or the file STATE_DIR/api-token." } }
                button type="submit" { "Log in" }
            }
        },
    )
}
