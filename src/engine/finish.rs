//! How every job ends, one path for one host and for many: the job steps
//! of a phase (Register) once every host succeeded, the job's state, its
//! audit line, then the steps that tell about it (notifications, reports)
//! and the event that says it is done.

use super::records::{self, JobBook};
use super::rollout::HostsFailed;
use super::steps::{JobCx, JobStep, StepError};
use super::{Engine, Event, Work};
use crate::model::*;
use chrono::Utc;

impl Engine {
    /// Ends a job whose hosts are done; returns it as written.
    pub(super) async fn finish(
        &self,
        book: &JobBook<'_>,
        work: &Work,
        hosts: Result<(), HostsFailed>,
        steps: &[Box<dyn JobStep>],
        started: std::time::Instant,
    ) -> Job {
        let job = book.parent.lock().await.clone();
        let mut cx = JobCx::new(self, book.sink, work, job);
        let outcome = match hosts {
            Ok(()) => run_phases(&mut cx, book, steps).await,
            Err(failed) => Err(failed),
        };
        let completed_at = Utc::now();
        let job = &mut cx.job;
        if !job.hosts.is_empty() {
            job.release = work.release_id.clone();
            job.service_url = outcome.is_ok().then(|| work.service_url.clone());
        }
        job.state = match outcome {
            Ok(()) => JobState::Completed { completed_at },
            Err(f) => JobState::Failed {
                kind: f.kind,
                error: f.error,
                rollback: f.rollback,
                completed_at,
            },
        };
        // What the hosts' failure left unreached (a rollout's Register).
        let reason = match job.hosts.is_empty() {
            true => "not run: the job failed",
            false => "not run: the rollout failed",
        };
        for phase in job.phases.iter_mut() {
            if phase.status() == PhaseStatus::Pending {
                phase.state = PhaseState::Skipped {
                    reason: reason.into(),
                };
                book.sink.event(&Event::PhaseFinished(&phase.view()));
            }
        }
        let entry = AuditEntry {
            details: cx.redactor.redact(&records::job_details(job)),
            ..records::job_audit(job, started)
        };
        book.edit(|j| *j = cx.job.clone()).await;
        if let Err(e) = book.store.audit(&entry).await {
            cx.note(&format!("warning: {e}"));
        }
        for step in steps.iter().filter(|s| s.phase().is_none()) {
            if step.skip(&cx).is_some() {
                continue;
            }
            if let Err(e) = step.run(&mut cx).await {
                cx.note(&format!("warning: {} failed: {}", step.name(), e.error));
            }
        }
        let job = book.edit(|j| *j = cx.job.clone()).await;
        book.sink.event(&Event::JobFinished(&job));
        job
    }
}

/// The job steps that belong to a phase, phase by phase, each phase
/// recorded and reported as the hosts' phases are.
async fn run_phases(
    cx: &mut JobCx<'_>,
    book: &JobBook<'_>,
    steps: &[Box<dyn JobStep>],
) -> Result<(), HostsFailed> {
    for name in PhaseName::ALL {
        let phase: Vec<&dyn JobStep> = steps
            .iter()
            .filter(|s| s.phase() == Some(name))
            .map(|s| s.as_ref())
            .collect();
        if phase.is_empty() {
            continue;
        }
        if let Err(e) = run_phase(cx, book, name, &phase).await {
            return Err(HostsFailed {
                kind: e.kind,
                error: cx.redactor.redact(&e.job_error.unwrap_or(e.error)),
                rollback: None,
            });
        }
    }
    Ok(())
}

/// One phase of job steps; skipped when all of them are.
async fn run_phase(
    cx: &mut JobCx<'_>,
    book: &JobBook<'_>,
    name: PhaseName,
    steps: &[&dyn JobStep],
) -> Result<(), StepError> {
    let skips: Vec<Option<String>> = steps.iter().map(|s| s.skip(cx)).collect();
    let names = steps.iter().map(|s| s.name());
    cx.job.phases[name.index()].steps = StepRecord::planned(names, &skips);
    let started_at = Utc::now();
    let mut shown = Vec::new();
    let mut failure = None;
    if let Some(reason) = PhaseState::all_skipped(&skips) {
        cx.job.phases[name.index()].state = reason;
    } else {
        cx.job.phases[name.index()].state = PhaseState::Running { started_at };
        book.edit(|j| *j = cx.job.clone()).await;
        cx.sink.event(&Event::PhaseStarted(name));
        for (i, step) in steps.iter().enumerate() {
            if skips[i].is_some() || failure.is_some() {
                continue;
            }
            let at = Utc::now();
            let result = step.run(cx).await;
            let state = match &result {
                Ok(done) => {
                    let details = cx.redactor.redact(&done.details);
                    if done.shown && !details.is_empty() {
                        shown.push(details.clone());
                    }
                    PhaseState::succeeded(at, details)
                }
                Err(e) => {
                    let error = cx.redactor.redact(&e.error);
                    PhaseState::failed(at, format!("{} failed", step.name()), error)
                }
            };
            cx.job.phases[name.index()].steps[i].state = state;
            failure = result.err();
        }
        let failed = format!("{} failed", name.as_str());
        cx.job.phases[name.index()].state = match &failure {
            None => PhaseState::succeeded(started_at, shown.join("; ")),
            Some(e) => PhaseState::failed(started_at, failed, cx.redactor.redact(&e.error)),
        };
    }
    book.edit(|j| *j = cx.job.clone()).await;
    let view = cx.job.phases[name.index()].view();
    cx.sink.event(&Event::PhaseFinished(&view));
    failure.map_or(Ok(()), Err)
}
