//! A job's records, each written once: the job as it starts and as it
//! changes ([`JobBook`]), how it finishes, the audit lines (the store's and
//! the host's own), a refusal, and registering the service.

use super::{Engine, Event, Sink, Work};
use crate::model::*;
use crate::store::Store;
use crate::support::error::Failure;
use chrono::Utc;
use std::time::Instant;

/// Where a job is written as it changes. With one host, the host's run is
/// the job; with several (the job lists its hosts), each host's run updates
/// its entry in the job and the job's phases sum them up.
pub(super) struct JobBook<'a> {
    pub store: Store,
    pub parent: tokio::sync::Mutex<Job>,
    /// Where a failed write is reported.
    pub sink: &'a dyn Sink,
}

impl JobBook<'_> {
    /// Records a host run's job.
    pub async fn update(&self, host: usize, host_job: &Job) {
        let mut parent = self.parent.lock().await;
        match parent.hosts.get_mut(host) {
            Some(report) => {
                report.update_from(host_job);
                parent.phases = sum_phases(&parent.hosts, &parent.phases);
            }
            // The job's own state is written once, when it ends
            // (`finish.rs`): a host done is not a job done.
            None => {
                let state = std::mem::replace(&mut parent.state, JobState::Running);
                *parent = Job {
                    state,
                    ..host_job.clone()
                };
            }
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

/// What a finished job's audit line says: where the release runs, or why
/// it failed and what the rollback did.
pub(super) fn job_details(job: &Job) -> String {
    if !job.hosts.is_empty() {
        let deployed = job.hosts.iter().filter(|h| h.deployed()).count();
        let release = job.release.as_deref().unwrap_or("?");
        return format!(
            "release {release} on {deployed} of {} hosts",
            job.hosts.len()
        );
    }
    match (job.state.error(), job.state.rollback()) {
        (None, _) => format!(
            "release {} is current",
            job.release.as_deref().unwrap_or("?")
        ),
        (Some(e), Some(rb)) => format!("{}; {}", first_line(e), rb.details),
        (Some(e), None) => first_line(e).to_string(),
    }
}

pub(super) fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}
