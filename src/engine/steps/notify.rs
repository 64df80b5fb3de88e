//! Notify: the finished job announced where `[[notify]]` says, and a
//! rollback reported to the registry the service is registered with. What
//! became of each message is recorded in the job; one that did not arrive
//! is a warning, never a failed job.

use super::{Done, JobCx, JobStep, StepError};
use crate::model::*;
use chrono::Utc;
use futures_util::future::BoxFuture;

pub(in crate::engine) struct Announce;

impl JobStep for Announce {
    fn phase(&self) -> Option<PhaseName> {
        None
    }

    fn name(&self) -> &'static str {
        "notify"
    }

    fn describe(&self, cx: &JobCx<'_>) -> String {
        let kinds: Vec<String> = cx
            .engine
            .config
            .notify
            .iter()
            .map(|n| format!("{:?}", n.kind).to_lowercase())
            .collect();
        match kinds.is_empty() {
            true => String::new(),
            false => format!("announce the outcome to {}", kinds.join(", ")),
        }
    }

    fn run<'a>(&'a self, cx: &'a mut JobCx<'_>) -> BoxFuture<'a, Result<Done, StepError>> {
        Box::pin(async move {
            let engine = cx.engine;
            let reported = report_rollback(cx).await;
            if engine.config.notify.is_empty() && reported.is_none() {
                return Ok(Done::quiet("nothing to announce"));
            }
            let mut sent = crate::integrations::notify::announce(
                &engine.http,
                &engine.config,
                &cx.job,
                &cx.redactor,
            )
            .await;
            sent.extend(reported);
            for n in sent.iter().filter(|n| !n.delivered) {
                let why = n.error.as_deref().unwrap_or("");
                cx.note(&format!(
                    "warning: the {} notification was not delivered ({} tries): {why}",
                    n.kind, n.attempts
                ));
            }
            cx.job.notifications.extend(sent);
            Ok(Done::quiet("announced"))
        })
    }
}

/// Tells the registry about a rollback, when there was one and the service
/// is registered there (a registry and a droplet id): a manual rollback
/// that succeeded, or a failed deploy the engine rolled back.
async fn report_rollback(cx: &JobCx<'_>) -> Option<Notification> {
    let (engine, job) = (cx.engine, &cx.job);
    let (Some(url), Some(droplet_id)) = (&engine.config.registry_url, job.droplet_id) else {
        return None;
    };
    let (trigger, from, to, reason) = match (&job.kind, job.state.rollback()) {
        (JobKind::Rollback, _) if job.succeeded() => (
            "manual",
            job.previous_release.clone(),
            job.release.clone(),
            None,
        ),
        (JobKind::Deploy, Some(rb)) if rb.success && rb.to_release.is_some() => (
            "automatic",
            Some(rb.from_release.clone()),
            rb.to_release.clone(),
            job.state
                .error()
                .map(|e| cx.redactor.redact(e.lines().next().unwrap_or(""))),
        ),
        _ => return None,
    };
    let event = serde_json::json!({
        "event": "rollback",
        "trigger": trigger,
        "service_name": job.service_name,
        "droplet_id": droplet_id,
        "from_release": from,
        "to_release": to,
        "reason": reason,
        "job_id": job.deploy_job_id,
        "at": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    });
    let token = engine.config.registry_token.as_ref().map(|t| t.expose());
    let sent = crate::integrations::registry_client::report_event(
        &engine.http,
        url.trim_end_matches('/'),
        &event,
        token,
    )
    .await;
    Some(Notification {
        kind: "registry".into(),
        event: "rollback".into(),
        delivered: sent.is_ok(),
        attempts: 1,
        error: sent.err().map(|e| e.to_string()),
    })
}
