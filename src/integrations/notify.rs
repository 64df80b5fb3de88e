//! Notifications: a finished job announced to a JSON webhook, a Slack
//! incoming webhook or a Telegram chat, on success, failure, rollback and
//! failed rollback (the seed's CRITICAL alert). Each is tried three times
//! with backoff; one that cannot be delivered never fails a deploy, and what
//! happened is recorded in the job.

use crate::input::config::{DeployerConfig, NotifyConfig, NotifyKind};
use crate::model::{Job, JobState, Notification};
use crate::support::secret::Redactor;
use std::time::Duration;

/// A notification's request: the URL and the JSON body.
pub type Request = (String, serde_json::Value);

/// Why a notification could not even be sent.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("no {0}")]
    Missing(&'static str),
    #[error(transparent)]
    Secret(#[from] crate::support::error::Failure),
}

/// The outcome word a finished job is announced under.
pub fn event_of(job: &Job) -> Option<&'static str> {
    match &job.state {
        JobState::Completed { .. } => Some("success"),
        JobState::Failed {
            kind: crate::support::error::FailureKind::RollbackFailed,
            ..
        } => Some("rollback_failed"),
        JobState::Failed {
            rollback: Some(_), ..
        } => Some("rollback"),
        JobState::Failed { .. } => Some("failure"),
        _ => None,
    }
}

/// One line a person reads.
fn headline(job: &Job, event: &str) -> String {
    let release = job.release.as_deref().unwrap_or("-");
    let who = &job.service_name;
    match event {
        "success" => format!(
            "✅ {who}: release {release} deployed (job {})",
            job.deploy_job_id
        ),
        "rollback" => format!(
            "⚠️ {who}: release {release} failed and was rolled back: {} (job {})",
            job.state.error().unwrap_or(""),
            job.deploy_job_id
        ),
        "rollback_failed" => format!(
            "🚨 CRITICAL {who}: release {release} failed and the rollback failed too, the service may be down: {} (job {})",
            job.state.error().unwrap_or(""),
            job.deploy_job_id
        ),
        _ => format!(
            "❌ {who}: deploy failed: {} (job {})",
            job.state.error().unwrap_or(""),
            job.deploy_job_id
        ),
    }
}

/// The request for one target: URL and JSON body.
fn request(
    target: &NotifyConfig,
    job: &Job,
    event: &str,
    config: &DeployerConfig,
) -> Result<Request, NotifyError> {
    let text = headline(job, event);
    match target.kind {
        NotifyKind::Webhook | NotifyKind::Slack => {
            let url = target.url.clone().ok_or(NotifyError::Missing("url"))?;
            let body = if target.kind == NotifyKind::Slack {
                serde_json::json!({ "text": text })
            } else {
                serde_json::json!({
                    "event": event,
                    "service_name": job.service_name,
                    "deploy_job_id": job.deploy_job_id,
                    "release": job.release,
                    "previous_release": job.previous_release,
                    "failure": job.state.failure().map(|k| k.as_str()),
                    "error": job.state.error(),
                    "service_url": job.service_url,
                    "text": text,
                })
            };
            Ok((url, body))
        }
        NotifyKind::Telegram => telegram(target, config, &text),
    }
}

/// A Telegram `sendMessage` request: the Bot API's URL (it holds the bot's
/// token) and the body that writes `text` to the target's chat.
pub fn telegram(
    target: &NotifyConfig,
    config: &DeployerConfig,
    text: &str,
) -> Result<Request, NotifyError> {
    let name = target
        .token_secret
        .as_deref()
        .ok_or(NotifyError::Missing("token_secret"))?;
    let chat = target
        .chat_id
        .clone()
        .ok_or(NotifyError::Missing("chat_id"))?;
    let token = crate::input::plan::resolve_secrets(&[name.to_string()], config, &|k| {
        std::env::var(k).ok()
    })?;
    let base = target
        .url
        .as_deref()
        .unwrap_or("https://api.telegram.org")
        .trim_end_matches('/');
    let url = format!("{base}/bot{}/sendMessage", token[0].1.expose());
    Ok((url, serde_json::json!({ "chat_id": chat, "text": text })))
}

/// Sends one request as a notification: three tries, and an error that
/// names neither the bot's token nor a secret.
pub async fn send(
    http: &reqwest::Client,
    request: Result<Request, NotifyError>,
    redactor: &Redactor,
    record: &mut Notification,
) {
    match request {
        Ok((url, body)) => deliver(http, &url, &body, record).await,
        Err(e) => record.error = Some(e.to_string()),
    }
    // A bot token is part of a Telegram URL: never in the record.
    record.error = record
        .error
        .take()
        .map(|e| redactor.redact(&scrub_urls(&e)));
}

/// Announces a finished job to every configured target that wants its
/// outcome. Never fails: what happened is returned.
pub async fn announce(
    http: &reqwest::Client,
    config: &DeployerConfig,
    job: &Job,
    redactor: &Redactor,
) -> Vec<Notification> {
    let Some(event) = event_of(job) else {
        return Vec::new();
    };
    let mut sent = Vec::new();
    for target in &config.notify {
        if !target.on.is_empty() && !target.on.iter().any(|o| o == event) {
            continue;
        }
        let kind = serde_json::to_value(target.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let mut record = Notification {
            kind,
            event: event.to_string(),
            delivered: false,
            attempts: 0,
            error: None,
        };
        send(
            http,
            request(target, job, event, config),
            redactor,
            &mut record,
        )
        .await;
        sent.push(record);
    }
    sent
}

/// Three tries, 0.5 s then 1 s apart.
async fn deliver(
    http: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
    record: &mut Notification,
) {
    let mut pause = Duration::from_millis(500);
    for attempt in 1..=3 {
        record.attempts = attempt;
        match http
            .post(url)
            .timeout(Duration::from_secs(5))
            .json(body)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => {
                record.delivered = true;
                record.error = None;
                return;
            }
            Ok(r) => record.error = Some(format!("answered {}", r.status())),
            Err(e) => record.error = Some(format!("unreachable: {e}")),
        }
        if attempt < 3 {
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
    }
}

/// Error texts from reqwest name the URL; a Telegram URL holds the bot's
/// token, so every `/bot…/` part is hidden.
fn scrub_urls(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("/bot") {
        out.push_str(&rest[..i + 4]);
        rest = &rest[i + 4..];
        let end = rest.find('/').unwrap_or(rest.len());
        out.push_str("***");
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_bot_token_in_an_error_is_hidden() {
        let e = "error sending request for url (http://127.0.0.1:1/bot123:ABC/sendMessage)";
        assert_eq!(
            super::scrub_urls(e),
            "error sending request for url (http://127.0.0.1:1/bot***/sendMessage)"
        );
    }
}
