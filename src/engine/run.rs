//! One job under its locks: the job record is written, each host runs the
//! host steps ([`JobRun`], scheduled by `rollout.rs`), then the job steps
//! run once (`finish.rs`). A step that fails stops its host's list; the
//! undo stack is unwound newest first, and the phases not reached are
//! skipped.

use super::records::{self, JobBook};
use super::steps::{self, Step, StepCx, StepError, Undo};
use super::{Engine, Event, Sink, Work};
use crate::error::{Failure, FailureKind};
use crate::lock::Lock;
use crate::model::*;
use crate::site::Site;
use chrono::Utc;
use std::time::Instant;

/// A job that may start: its service lock and id, and whether a front end
/// has recorded it already ([`Engine::accept`]).
pub(super) struct Ticket {
    pub lock: Lock,
    pub job_id: String,
    pub accepted: bool,
}

impl Engine {
    /// Takes the hosts' locks, records the job and runs it.
    pub(super) async fn run(
        &self,
        sites: &[Site],
        work: Work,
        validation: Phase,
        ticket: Ticket,
        sink: &dyn Sink,
    ) -> Result<Job, Failure> {
        let (host_locks, notes) = self
            .lock_hosts(sites, &work.service, &ticket.job_id)
            .await?;
        for note in &notes {
            sink.event(&Event::Note(note));
        }
        let service = work.service.clone();
        let result = self
            .run_locked(sites, work, validation, &ticket, sink)
            .await;
        if let Ok(job) = &result
            && job.succeeded()
        {
            self.record_hosts(sites, &service, job, sink).await;
        }
        for failure in host_locks.release().await {
            sink.event(&Event::Note(&format!("warning: {failure}")));
        }
        drop(ticket);
        result
    }

    async fn run_locked(
        &self,
        sites: &[Site],
        work: Work,
        validation: Phase,
        ticket: &Ticket,
        sink: &dyn Sink,
    ) -> Result<Job, Failure> {
        let store = self.store().await?;
        // Holding the lock, no other job of this service can be running: a
        // job marked running had its deployer die mid-way.
        if store.has_dead_jobs(&work.service).await? {
            self.sweep(sites, &work.service, super::recover::BringUp::Current, sink)
                .await?;
        }
        self.opening_audit(store, &work, ticket).await?;
        let mut previous = Vec::with_capacity(sites.len());
        for site in sites {
            previous.push(site.host.current(&site.dirs(&work.service)).await);
        }
        let job = self.first_record(sites, &work, ticket, &validation, &previous);
        if ticket.accepted {
            store.save_job(&job).await?;
        } else {
            store.insert_job(&job).await?;
        }
        let book = JobBook {
            store: store.clone(),
            parent: tokio::sync::Mutex::new(job),
            sink,
        };
        let (host_steps, job_steps) = steps::split(steps::deploy_steps());
        let hosts = super::rollout::Hosts {
            sites,
            book: &book,
            validation: &validation,
            previous,
            sink,
        };
        let (mut work, started) = (work, Instant::now());
        let outcome = self.run_hosts(&hosts, &mut work, &host_steps).await;
        Ok(self
            .finish(&book, &work, outcome, &job_steps, started)
            .await)
    }

    /// Remembers where the service's current release now runs, for the
    /// day-2 commands.
    async fn record_hosts(&self, sites: &[Site], service: &str, job: &Job, sink: &dyn Sink) {
        let hosts: Vec<String> = sites.iter().map(|s| s.host.name()).collect();
        let recorded = match self.store().await {
            Ok(store) => store
                .set_service_hosts(service, &hosts, &job.deploy_job_id)
                .await
                .map_err(Failure::from),
            Err(f) => Err(f),
        };
        if let Err(f) = recorded {
            sink.event(&Event::Note(&format!("warning: {f}")));
        }
    }

    /// Audit lines a job starts with: tests skipped, a dead holder's lock
    /// taken over.
    async fn opening_audit(
        &self,
        store: &crate::store::Store,
        work: &Work,
        ticket: &Ticket,
    ) -> Result<(), Failure> {
        if work.tests.skipped && (work.tests.local.is_some() || work.tests.server.is_some()) {
            let entry = AuditEntry {
                details: "the service's [tests] were skipped (--skip-tests)".into(),
                duration_ms: None,
                ..records::audit_entry(
                    &self.actor,
                    "skip-tests",
                    &work.service,
                    Some(&ticket.job_id),
                    "skipped",
                    Instant::now(),
                )
            };
            store.audit(&entry).await?;
        }
        if let Some(dead) = &ticket.lock.took_over {
            self.audit_took_over(&work.service, &ticket.job_id, dead)
                .await?;
        }
        Ok(())
    }

    /// The audit line for a lock whose holder had died.
    pub(super) async fn audit_took_over(
        &self,
        service: &str,
        job_id: &str,
        dead: &crate::lock::Holder,
    ) -> Result<(), Failure> {
        let entry = AuditEntry {
            details: format!("the lock's holder, {dead}, had died"),
            duration_ms: None,
            ..records::audit_entry(
                &self.actor,
                "lock",
                service,
                Some(job_id),
                "taken over",
                Instant::now(),
            )
        };
        self.store().await?.audit(&entry).await?;
        Ok(())
    }

    /// The job as first written: Validation done, the rest pending, and for
    /// a rollout each host in its wave.
    fn first_record(
        &self,
        sites: &[Site],
        work: &Work,
        ticket: &Ticket,
        validation: &Phase,
        previous: &[Option<String>],
    ) -> Job {
        let first = previous.first().cloned().flatten();
        let mut job = records::new_job(self, work, ticket.job_id.clone(), validation, first);
        if sites.len() > 1 {
            job.previous_release = None;
            let waves = work.rollout.waves(sites.len());
            job.hosts = sites
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let wave = waves.iter().position(|w| w.contains(&i)).unwrap_or(0);
                    HostReport::pending(s.host.name(), wave)
                })
                .collect();
        }
        job
    }
}

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
#[path = "run_tests.rs"]
mod tests;
