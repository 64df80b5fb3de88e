//! One host's run of the host steps ([`JobRun`]): its phases, its undo
//! stack and where it reports. A step that fails stops the list; the undo
//! stack is unwound newest first, and the phases not reached are skipped.

use super::records::{self, JobBook};
use super::steps::{Step, StepCx, StepError, Undo};
use super::{Engine, Event, Sink, Work};
use crate::hosting::site::Site;
use crate::model::*;
use crate::support::error::FailureKind;
use chrono::Utc;
use std::time::Instant;

/// The phases a rollout runs on every host at once, before the waves.
const PREPARED: [PhaseName; 2] = [PhaseName::Transfer, PhaseName::Build];

/// One job in progress on one host: its phases, its undo stack, and where
/// it reports.
pub(super) struct JobRun<'a> {
    cx: StepCx<'a>,
    book: &'a JobBook<'a>,
    host_index: usize,
    pub job: Job,
    undo: Vec<Box<dyn Undo>>,
    /// The undos run, in order (what the rollback did, step by step).
    pub undone: Vec<String>,
    /// When the job's time limit runs out: the step running then fails.
    deadline: tokio::time::Instant,
    started: Instant,
}

/// Why a host's run failed.
struct RunFailure {
    error: StepError,
    rollback: Option<RollbackRecord>,
}

impl<'a> JobRun<'a> {
    pub fn new(
        engine: &'a Engine,
        site: &'a Site,
        book: &'a JobBook<'a>,
        host_index: usize,
        sink: &'a dyn Sink,
        work: &'a Work,
    ) -> Self {
        let cx = StepCx::new(engine, site, &book.store, sink, work);
        JobRun {
            job: Job::pending(
                String::new(),
                work.kind,
                work.service.clone(),
                String::new(),
            ),
            cx,
            book,
            host_index,
            undo: Vec::new(),
            undone: Vec::new(),
            deadline: tokio::time::Instant::now() + work.timeout,
            started: Instant::now(),
        }
    }

    /// Sets the run's job record: Validation done, `previous` current.
    pub fn start(&mut self, validation: &Phase, previous: Option<String>, job_id: &str) {
        self.cx.previous = previous.clone();
        self.cx.job_id = job_id.to_string();
        self.job = records::new_job(
            self.cx.engine,
            self.cx.work,
            job_id.to_string(),
            validation,
            previous,
        );
    }

    async fn save(&mut self) {
        self.job.release = self.cx.release.clone();
        self.job.transfer = self.cx.transfer.clone();
        self.job.registration = self.cx.registration.clone();
        self.job.service_url = self.cx.service_url.clone();
        self.book.update(self.host_index, &self.job).await;
    }

    /// Transfer and Build alone, which start nothing: a rollout prepares
    /// every host at once. A failure finishes the run (unwound); true when
    /// the host is ready for Start Service.
    pub async fn prepare(&mut self, steps: &[Box<dyn Step>]) -> bool {
        match self.run_steps(steps, &PREPARED).await {
            Ok(()) => true,
            Err(f) => {
                self.finish(Err(f)).await;
                false
            }
        }
    }

    /// The phases after [`JobRun::prepare`], then how the host's run ended.
    pub async fn complete(&mut self, steps: &[Box<dyn Step>]) {
        let outcome = self
            .run_steps(steps, &PhaseName::ALL[1 + PREPARED.len()..])
            .await;
        self.finish(outcome).await;
    }

    /// A prepared host the stopped rollout never reached: what Transfer
    /// and Build left is taken away, and the host is marked skipped.
    pub async fn abandon(&mut self, reason: &str) {
        let _ = self.unwind().await;
        self.skip_rest(reason).await;
        self.job.state = JobState::Skipped;
        self.save().await;
    }

    /// Records how the host's run ended, and its line in the host's own
    /// audit log. The job's end is written once, for all hosts (`finish.rs`).
    async fn finish(&mut self, outcome: Result<(), RunFailure>) {
        let redactor = &self.cx.redactor;
        let completed_at = Utc::now();
        self.job.state = match outcome {
            Ok(()) => JobState::Completed { completed_at },
            Err(RunFailure { error, rollback }) => JobState::Failed {
                kind: match &rollback {
                    Some(r) if !r.success => FailureKind::RollbackFailed,
                    _ => error.kind,
                },
                error: redactor.redact(&error.job_error.unwrap_or(error.error)),
                rollback,
                completed_at,
            },
        };
        self.save().await;
        let details = records::job_details(&self.job);
        let entry = AuditEntry {
            details: self.cx.redactor.redact(&details),
            ..records::job_audit(&self.job, self.started)
        };
        let line = records::host_audit_line(&entry, self.job.release.as_deref());
        if let Err(e) = self.cx.site.host.audit(&self.cx.dirs, &line).await {
            self.cx.note(&format!("warning: {e}"));
        }
    }

    /// Phases in order; on a failure, the unwind.
    async fn run_steps(
        &mut self,
        steps: &[Box<dyn Step>],
        phases: &[PhaseName],
    ) -> Result<(), RunFailure> {
        for name in phases {
            let phase: Vec<&dyn Step> = steps
                .iter()
                .filter(|s| s.phase() == *name)
                .map(|s| s.as_ref())
                .collect();
            // A phase of job steps alone (Register) runs once, afterwards.
            if phase.is_empty() {
                continue;
            }
            if let Err(error) = self.run_phase(*name, &phase).await {
                let rollback = self.unwind().await;
                self.skip_rest(&format!("not run: {} failed", name.as_str()))
                    .await;
                return Err(RunFailure { error, rollback });
            }
        }
        Ok(())
    }

    /// Runs one phase's steps; the phase is skipped when all of them are.
    async fn run_phase(&mut self, name: PhaseName, steps: &[&dyn Step]) -> Result<(), StepError> {
        let skips: Vec<Option<String>> = steps.iter().map(|s| s.skip(&self.cx)).collect();
        let names = steps.iter().map(|s| s.name());
        self.job.phases[name.index()].steps = StepRecord::planned(names, &skips);
        if let Some(skipped) = PhaseState::all_skipped(&skips) {
            self.finish_phase(name, skipped).await;
            return Ok(());
        }
        let started_at = Utc::now();
        self.job.phases[name.index()].state = PhaseState::Running { started_at };
        self.save().await;
        self.cx.sink.event(&Event::PhaseStarted(name));
        let mut shown = Vec::new();
        let mut failure = None;
        for (i, step) in steps.iter().enumerate() {
            if skips[i].is_some() {
                continue;
            }
            let state = match &failure {
                Some((failed, _)) => PhaseState::Skipped {
                    reason: format!("not run: {failed} failed"),
                },
                None => match self.run_step(*step, &mut shown).await {
                    Ok(state) => state,
                    Err((state, e)) => {
                        failure = Some((step.name(), e));
                        state
                    }
                },
            };
            self.job.phases[name.index()].steps[i].state = state;
            self.save().await;
        }
        let failed_details = format!("{} failed", name.as_str());
        let state = match &failure {
            None => PhaseState::succeeded(started_at, shown.join("; ")),
            Some((_, e)) => PhaseState::failed(
                started_at,
                failed_details,
                self.cx.redactor.redact(&e.error),
            ),
        };
        self.finish_phase(name, state).await;
        failure.map_or(Ok(()), |(_, e)| Err(e))
    }

    /// Runs one step: its record's state, and the failure if it failed.
    async fn run_step(
        &mut self,
        step: &dyn Step,
        shown: &mut Vec<String>,
    ) -> Result<PhaseState, (PhaseState, StepError)> {
        let started_at = Utc::now();
        let limit = self.cx.work.timeout;
        let ran = tokio::time::timeout_at(self.deadline, step.run(&mut self.cx))
            .await
            .unwrap_or_else(|_| {
                Err(StepError::new(
                    step.phase().failure_kind(),
                    format!(
                        "the job ran out of time during {} (job_timeout_secs = {})",
                        step.name(),
                        limit.as_secs()
                    ),
                ))
            });
        match ran {
            Ok(done) => {
                let details = self.cx.redactor.redact(&done.details);
                if done.shown && !details.is_empty() {
                    shown.push(details.clone());
                }
                let details = match &done.output {
                    Some(out) => format!("{details}\n{}", self.cx.redactor.redact(out)),
                    None => details,
                };
                if done.commit {
                    self.undo.clear();
                }
                self.undo.extend(done.undo);
                Ok(PhaseState::succeeded(started_at, details))
            }
            Err(mut e) => {
                self.undo.extend(e.undo.take());
                let error = self.cx.redactor.redact(&e.error);
                let failed = format!("{} failed", step.name());
                Err((PhaseState::failed(started_at, failed, error), e))
            }
        }
    }

    /// Sets a phase's final state, writes the job and reports the phase.
    async fn finish_phase(&mut self, name: PhaseName, state: PhaseState) {
        self.job.phases[name.index()].state = state;
        self.save().await;
        let view = self.job.phases[name.index()].view();
        self.cx.sink.event(&Event::PhaseFinished(&view));
    }

    /// Runs the undo stack, newest first. Returns what the rollback did;
    /// `None` when nothing had changed.
    async fn unwind(&mut self) -> Option<RollbackRecord> {
        if self.undo.is_empty() {
            return None;
        }
        let previous = self.cx.previous.clone();
        let mut record = RollbackRecord {
            to_release: previous.clone(),
            from_release: self.cx.release.clone().unwrap_or_default(),
            success: true,
            details: match &previous {
                // Failed before Start Service: the previous release was never stopped.
                Some(p) => format!("release {p} kept running"),
                None => "no previous release to restore".to_string(),
            },
        };
        while let Some(undo) = self.undo.pop() {
            self.undone.push(undo.describe());
            undo.undo(&self.cx, &mut record).await;
        }
        Some(record)
    }

    /// Skips every phase still pending.
    async fn skip_rest(&mut self, reason: &str) {
        for name in PhaseName::ALL {
            if self.job.phases[name.index()].status() == PhaseStatus::Pending {
                let state = PhaseState::Skipped {
                    reason: reason.to_string(),
                };
                self.finish_phase(name, state).await;
            }
        }
    }
}

#[cfg(test)]
#[path = "host_run_tests.rs"]
mod tests;
