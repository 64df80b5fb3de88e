//! A job's records, each written once: the job as it starts and as it
//! changes ([`JobBook`]), how it finishes, the audit lines (the store's and
//! the host's own), a refusal, and registering the service.

use super::{Engine, Event, Sink, Work};
use crate::error::Failure;
use crate::model::*;
use crate::store::Store;
use chrono::Utc;
use std::time::Instant;

/// Where a job is written as it changes. With one host, the host's run is
/// the job; with several, each host's run updates its entry in the job and
/// the job's phases sum them up.
pub(super) struct JobBook<'a> {
    pub store: Store,
    pub parent: tokio::sync::Mutex<Job>,
    pub multi: bool,
    /// Where a failed write is reported.
    pub sink: &'a dyn Sink,
}

impl JobBook<'_> {
    /// Records a host run's job.
    pub async fn update(&self, host: usize, host_job: &Job) {
        let mut parent = self.parent.lock().await;
        if self.multi {
            parent.hosts[host].update_from(host_job);
            parent.phases = sum_phases(&parent.hosts, &parent.phases);
        } else {
            *parent = host_job.clone();
        }
        self.save(&parent).await;
    }

    /// Changes the job and writes it; returns it as written.
    pub async fn edit(&self, f: impl FnOnce(&mut Job)) -> Job {
        let mut parent = self.parent.lock().await;
        f(&mut parent);
        self.save(&parent).await;
        parent.clone()
    }

    async fn save(&self, job: &Job) {
        if let Err(e) = self.store.save_job(job).await {
            self.sink.event(&Event::Note(&format!("warning: {e}")));
        }
    }
}

/// The job's phases over several hosts: Validation as run once, Register
/// the rollout's own, the rest summed up from the hosts that ran.
fn sum_phases(hosts: &[HostReport], current: &[Phase]) -> Vec<Phase> {
    PhaseName::ALL
        .iter()
        .map(|name| match name {
            PhaseName::Validation | PhaseName::Register => current[name.index()].clone(),
            _ => {
                let ran: Vec<&Phase> = hosts
                    .iter()
                    .filter(|h| !matches!(h.state, JobState::Pending | JobState::Skipped))
                    .map(|h| &h.phases[name.index()])
                    .collect();
                aggregate_phase(*name, &ran)
            }
        })
        .collect()
}

/// A job record as it starts: Validation done, the rest pending.
pub(super) fn new_job(
    engine: &Engine,
    work: &Work,
    job_id: String,
    validation: &Phase,
    previous: Option<String>,
) -> Job {
    let mut phases = Phase::all_pending();
    phases[0] = validation.clone();
    Job {
        deploy_job_id: job_id,
        kind: work.kind,
        service_name: work.service.clone(),
        service_path: work.service_path.clone(),
        state: JobState::Running,
        droplet_id: work.droplet_id,
        service_port: work.spec.port,
        service_url: None,
        deployment_method: work.method.clone(),
        release: None,
        previous_release: previous,
        phases,
        registration: None,
        started_at: validation.view().started_at.unwrap_or_else(Utc::now),
        actor: engine.actor.clone(),
        transfer: None,
        hosts: Vec::new(),
        notifications: Vec::new(),
        commit: work.commit.clone(),
    }
}

/// Records a job that was refused before it ran: its Validation phase as
/// it ran (if it did), every other phase skipped, and why.
pub(super) fn refused(job: &mut Job, validation: Option<PhaseView>, f: &Failure) {
    for phase in job.phases.iter_mut() {
        *phase = match (&validation, phase.name) {
            (Some(v), PhaseName::Validation) => Phase::from_view(v),
            _ => Phase {
                state: PhaseState::Skipped {
                    reason: "not run: the job did not start".into(),
                },
                ..Phase::pending(phase.name)
            },
        };
    }
    job.state = JobState::from(f);
}

/// An audit line with no details yet.
pub(super) fn audit_entry(
    actor: &str,
    action: &str,
    service: &str,
    job_id: Option<&str>,
    outcome: &str,
    started: Instant,
) -> AuditEntry {
    AuditEntry {
        at: Utc::now(),
        actor: actor.to_string(),
        action: action.to_string(),
        service_name: service.to_string(),
        job_id: job_id.map(str::to_string),
        outcome: outcome.to_string(),
        duration_ms: Some(started.elapsed().as_millis() as i64),
        details: String::new(),
    }
}

/// A finished job's audit line: its outcome (the caller adds details).
pub(super) fn job_audit(job: &Job, started: Instant) -> AuditEntry {
    let outcome = match job.state.failure() {
        None => "success".to_string(),
        Some(kind) => format!("failed ({})", kind.as_str()),
    };
    audit_entry(
        &job.actor,
        job.kind.as_str(),
        &job.service_name,
        Some(&job.deploy_job_id),
        &outcome,
        started,
    )
}

/// The same line as the host's own audit log keeps it.
pub(super) fn host_audit_line(entry: &AuditEntry, release: Option<&str>) -> String {
    format!(
        "{} actor={} action={} job={} release={} outcome={:?} duration_ms={} details={:?}",
        entry.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        entry.actor,
        entry.action,
        entry.job_id.as_deref().unwrap_or("-"),
        release.unwrap_or("-"),
        entry.outcome,
        entry.duration_ms.unwrap_or(0),
        entry.details,
    )
}

/// Announces a finished job where `[[notify]]` says, records what became of
/// each notification in the job, and says when one did not arrive. Never
/// fails the job.
pub(super) async fn announce(
    engine: &Engine,
    job: &mut Job,
    redactor: &crate::secret::Redactor,
    sink: &dyn Sink,
) {
    let reported = report_rollback(engine, job, redactor).await;
    if engine.config.notify.is_empty() && reported.is_none() {
        return;
    }
    job.notifications = crate::notify::announce(&engine.http, &engine.config, job, redactor).await;
    job.notifications.extend(reported);
    for n in job.notifications.iter().filter(|n| !n.delivered) {
        let why = n.error.as_deref().unwrap_or("");
        sink.event(&Event::Note(&format!(
            "warning: the {} notification was not delivered ({} tries): {why}",
            n.kind, n.attempts
        )));
    }
}

/// Tells the registry about a rollback, when there was one and the service
/// is registered there (a registry and a droplet id): a manual rollback
/// that succeeded, or a failed deploy the engine rolled back.
async fn report_rollback(
    engine: &Engine,
    job: &Job,
    redactor: &crate::secret::Redactor,
) -> Option<Notification> {
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
            job.state.error().map(|e| redactor.redact(first_line(e))),
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
    let sent =
        crate::registry::report_event(&engine.http, url.trim_end_matches('/'), &event, token).await;
    Some(Notification {
        kind: "registry".into(),
        event: "rollback".into(),
        delivered: sent.is_ok(),
        attempts: 1,
        error: sent.err().map(|e| e.to_string()),
    })
}

/// Registers the service with the registry: the Register phase of a
/// one-host job and of a rollout.
pub(super) async fn register(
    engine: &Engine,
    work: &Work,
    registry_url: &str,
    droplet_id: i64,
) -> Result<Registration, crate::registry::RegistryError> {
    crate::registry::register(
        &engine.http,
        registry_url,
        droplet_id,
        &work.service,
        &work.service_url,
        engine.config.registry_token.as_ref().map(|t| t.expose()),
    )
    .await
}

pub(super) fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}
