//! Report: once the job is done (after Register), its whole report, phase
//! by phase, posted to each Telegram chat whose `[[notify]]` entry says
//! `report = true`. Recorded in the job's notifications like any message.

use super::{Done, JobCx, JobStep, StepError};
use crate::input::config::{NotifyConfig, NotifyKind};
use crate::model::{Job, Notification, PhaseName};
use crate::support::secret::Redactor;
use futures_util::future::BoxFuture;

/// The Bot API refuses messages longer than this.
const LIMIT: usize = 4096;

pub(in crate::engine) struct TelegramReport;

/// The chats that want the report.
fn chats<'a>(cx: &'a JobCx<'_>) -> impl Iterator<Item = &'a NotifyConfig> {
    let notify = &cx.engine.config.notify;
    notify
        .iter()
        .filter(|n| n.kind == NotifyKind::Telegram && n.report)
}

/// The message: the job's text report (without a terminal's colours),
/// secrets hidden, then cut to what Telegram takes.
fn message(job: &Job, redactor: &Redactor) -> String {
    let report = crate::render::report::text(job);
    let text = redactor.redact(&anstream::adapter::strip_str(&report).to_string());
    match text.char_indices().nth(LIMIT - 1) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text,
    }
}

impl JobStep for TelegramReport {
    fn phase(&self) -> Option<PhaseName> {
        None
    }

    fn name(&self) -> &'static str {
        "report to telegram"
    }

    fn skip(&self, cx: &JobCx<'_>) -> Option<String> {
        let none = chats(cx).next().is_none();
        none.then(|| "no [[notify]] telegram chat with report = true".into())
    }

    fn describe(&self, cx: &JobCx<'_>) -> String {
        let ids: Vec<&str> = chats(cx).filter_map(|n| n.chat_id.as_deref()).collect();
        format!("post the job's report to Telegram chat {}", ids.join(", "))
    }

    fn run<'a>(&'a self, cx: &'a mut JobCx<'_>) -> BoxFuture<'a, Result<Done, StepError>> {
        Box::pin(async move {
            let text = message(&cx.job, &cx.redactor);
            let mut sent = Vec::new();
            for chat in chats(cx) {
                let request = crate::integrations::notify::telegram(chat, &cx.engine.config, &text);
                let mut record = Notification {
                    kind: "telegram".into(),
                    event: "report".into(),
                    delivered: false,
                    attempts: 0,
                    error: None,
                };
                crate::integrations::notify::send(
                    &cx.engine.http,
                    request,
                    &cx.redactor,
                    &mut record,
                )
                .await;
                sent.push(record);
            }
            let delivered = sent.iter().filter(|n| n.delivered).count();
            let details = format!("report posted to {delivered} of {} chats", sent.len());
            cx.job.notifications.extend(sent);
            Ok(Done::quiet(details))
        })
    }
}

#[cfg(test)]
#[path = "telegram_tests.rs"]
mod tests;
