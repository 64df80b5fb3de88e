//! The steps a job is made of, one file each, and the list that orders them.
//!
//! A job is one list ([`deploy_steps`]) of two kinds of step. A host step
//! ([`Step`]) runs on each of the job's hosts (a rollout schedules them over
//! waves); a job step ([`JobStep`]) runs once for the whole job: in a phase
//! after every host is done (Register), or afterwards, whatever the
//! outcome, to tell someone about it (notifications, reports).
//!
//! A host step belongs to one of the six phases. Its `run` does one thing
//! and, when it changed something, returns the [`Undo`] that takes it back;
//! the engine (`run.rs`), not the step, keeps the stack of undos and unwinds
//! it when a later step fails. A step that does not apply to a job says why
//! in `skip`. Adding a capability is a new file here and one line in
//! [`deploy_steps`].

mod backup;
mod build;
mod current;
mod health;
mod migrate;
mod notify;
pub(super) mod proxy;
mod python;
mod register;
mod smoke;
mod start;
mod swarm;
mod telegram;
mod tests;
mod transfer;

pub(super) use health::{look, restart_and_verify};
pub(super) use start::stop_all;

use super::{Engine, Event, Sink, Source, Work};
use crate::hosting::release::ServiceDirs;
use crate::hosting::runtime::{ReleaseCtx, Runtime};
use crate::hosting::site::Site;
use crate::model::*;
use crate::store::Store;
use crate::support::error::FailureKind;
use crate::support::secret::{Redactor, Secret};
use futures_util::future::BoxFuture;

/// Every step of a deploy or rollback, in the order they run. Validation
/// runs before the job is recorded (`validate.rs`).
pub(super) fn deploy_steps() -> Vec<Item> {
    use Item::{Host, Job};
    vec![
        Host(Box::new(tests::LocalTests)),
        Host(Box::new(transfer::Upload)),
        Host(Box::new(python::PythonDeps)),
        Host(Box::new(build::BuildCommand)),
        Host(Box::new(build::ImageBuild)),
        Host(Box::new(tests::ServerTests)),
        Host(Box::new(backup::Backup)),
        Host(Box::new(migrate::Migrate)),
        Host(Box::new(start::StopOld)),
        Host(Box::new(start::StartNew)),
        Host(Box::new(swarm::Converge)),
        Host(Box::new(health::VerifyHealth)),
        Host(Box::new(smoke::SmokeChecks)),
        Host(Box::new(proxy::SwitchProxy)),
        Host(Box::new(current::SwitchCurrent)),
        Host(Box::new(proxy::DrainOld)),
        Job(Box::new(register::Register)),
        Job(Box::new(notify::Announce)),
        Job(Box::new(telegram::TelegramReport)),
    ]
}

/// One entry of the list.
pub(super) enum Item {
    /// Runs on each host.
    Host(Box<dyn Step>),
    /// Runs once for the job.
    Job(Box<dyn JobStep>),
}

pub(super) type HostSteps = Vec<Box<dyn Step>>;
pub(super) type JobSteps = Vec<Box<dyn JobStep>>;

/// The list's host steps and job steps, each in their order.
pub(super) fn split(items: Vec<Item>) -> (HostSteps, JobSteps) {
    let (mut host, mut job) = (Vec::new(), Vec::new());
    for item in items {
        match item {
            Item::Host(s) => host.push(s),
            Item::Job(s) => job.push(s),
        }
    }
    (host, job)
}

/// One step of a job.
pub(super) trait Step: Send + Sync {
    fn phase(&self) -> PhaseName;
    fn name(&self) -> &'static str;
    /// Why the step does not apply to this job, when it does not.
    fn skip(&self, _cx: &StepCx<'_>) -> Option<String> {
        None
    }
    fn run<'a>(&'a self, cx: &'a mut StepCx<'_>) -> BoxFuture<'a, Result<Done, StepError>>;
    /// What the step would do, for `deploy --dry-run` (commands as they
    /// would run, secrets masked).
    fn describe(&self, _cx: &StepCx<'_>) -> String {
        String::new()
    }
}

/// A step run once for the whole job, after every host's steps.
pub(super) trait JobStep: Send + Sync {
    /// The phase whose record holds the step: it runs only when every host
    /// succeeded, and its failure fails the job. `None`: it runs afterwards
    /// whatever the outcome, records what it sent in the job's
    /// notifications, and its failure is only a warning.
    fn phase(&self) -> Option<PhaseName>;
    fn name(&self) -> &'static str;
    fn skip(&self, _cx: &JobCx<'_>) -> Option<String> {
        None
    }
    fn run<'a>(&'a self, cx: &'a mut JobCx<'_>) -> BoxFuture<'a, Result<Done, StepError>>;
    /// What the step would do, for `deploy --dry-run`.
    fn describe(&self, _cx: &JobCx<'_>) -> String {
        String::new()
    }
}

/// What a job step sees: the job's work and its record as it stands.
pub(super) struct JobCx<'a> {
    pub engine: &'a Engine,
    pub sink: &'a dyn Sink,
    pub work: &'a Work,
    pub redactor: Redactor,
    pub job: Job,
}

impl<'a> JobCx<'a> {
    pub fn new(engine: &'a Engine, sink: &'a dyn Sink, work: &'a Work, job: Job) -> Self {
        JobCx {
            engine,
            sink,
            work,
            redactor: work.redactor(),
            job,
        }
    }

    pub fn note(&self, text: &str) {
        self.sink.event(&Event::Note(&self.redactor.redact(text)));
    }
}

/// Takes back what a step did.
pub(super) trait Undo: Send + Sync {
    /// What it does, as the job's notes and the tests say it.
    fn describe(&self) -> String;
    /// Runs it; an undo that restores a release says so in `record`.
    fn undo<'a>(&'a self, cx: &'a StepCx<'_>, record: &'a mut RollbackRecord) -> BoxFuture<'a, ()>;
}

/// A step that succeeded.
pub(super) struct Done {
    pub details: String,
    /// Whether the details go into the phase's line too (not only the step's).
    pub shown: bool,
    pub undo: Option<Box<dyn Undo>>,
    /// The release is live: what came before can no longer be undone.
    pub commit: bool,
    /// Output kept in the step's record (the tail of a test run).
    pub output: Option<String>,
}

impl Done {
    /// Details for the phase line.
    pub fn shown(details: impl Into<String>) -> Self {
        Done {
            details: details.into(),
            shown: true,
            undo: None,
            commit: false,
            output: None,
        }
    }

    /// Details for the step's record only.
    pub fn quiet(details: impl Into<String>) -> Self {
        Done {
            shown: false,
            ..Done::shown(details)
        }
    }

    pub fn with_undo(self, undo: impl Undo + 'static) -> Self {
        Done {
            undo: Some(Box::new(undo)),
            ..self
        }
    }
}

/// A step that failed: how the job fails, and the error for the phase.
pub(super) struct StepError {
    pub kind: FailureKind,
    pub error: String,
    /// The job's error, when it says more than the phase's.
    pub job_error: Option<String>,
    /// What a step that failed half-way leaves to clean up.
    pub undo: Option<Box<dyn Undo>>,
}

impl StepError {
    pub fn new(kind: FailureKind, error: impl std::fmt::Display) -> Self {
        StepError {
            kind,
            error: error.to_string(),
            job_error: None,
            undo: None,
        }
    }
}

/// What a step sees: the job's work and host, and what earlier steps found.
pub(super) struct StepCx<'a> {
    pub engine: &'a Engine,
    pub site: &'a Site,
    pub store: &'a Store,
    pub sink: &'a dyn Sink,
    pub work: &'a Work,
    pub dirs: ServiceDirs,
    pub redactor: Redactor,
    pub job_id: String,
    /// The release `current` named when the job began.
    pub previous: Option<String>,
    /// The job's release: set by Transfer, or given (a rollback).
    pub release: Option<String>,
    pub transfer: Option<TransferStats>,
    pub registration: Option<Registration>,
    /// Set once the release is current.
    pub service_url: Option<String>,
    /// The backup this job took before the old release stopped.
    pub backup: Option<String>,
}

impl<'a> StepCx<'a> {
    pub fn new(
        engine: &'a Engine,
        site: &'a Site,
        store: &'a Store,
        sink: &'a dyn Sink,
        work: &'a Work,
    ) -> Self {
        StepCx {
            engine,
            site,
            store,
            sink,
            work,
            dirs: site.dirs(&work.service),
            redactor: work.redactor(),
            job_id: String::new(),
            previous: None,
            release: match &work.source {
                Source::Existing(id) => Some(id.clone()),
                Source::Dir(_) => None,
            },
            transfer: None,
            registration: None,
            service_url: None,
            backup: None,
        }
    }

    /// The service's directories in deployer's own state directory (on
    /// this machine, whatever the host).
    pub fn local_dirs(&self) -> ServiceDirs {
        ServiceDirs::new(self.engine.state_dir(), &self.work.service)
    }

    pub fn note(&self, text: &str) {
        self.sink.event(&Event::Note(&self.redactor.redact(text)));
    }

    pub fn runtime(&self, spec: &RunSpec) -> &'a dyn Runtime {
        self.site.runtime(spec.runtime)
    }

    /// Whether the job brings back a release that exists already.
    pub fn existing(&self) -> bool {
        matches!(self.work.source, Source::Existing(_))
    }

    pub fn ctx(&self, release: &str, spec: &RunSpec, secrets: &[(String, Secret)]) -> ReleaseCtx {
        ReleaseCtx {
            service: self.work.service.clone(),
            release: release.to_string(),
            dirs: self.dirs.clone(),
            spec: spec.clone(),
            secrets: secrets.to_vec(),
        }
    }

    /// The job's own release, as its runtime sees it.
    pub fn new_release(&self) -> ReleaseCtx {
        let release = self.release.clone().unwrap_or_default();
        self.ctx(&release, &self.work.spec, &self.work.secrets)
    }

    /// An earlier release, from its stored spec (or, when the store has no
    /// record of it, from this job's spec).
    pub async fn earlier_release(&self, release: &str) -> ReleaseCtx {
        let stored = self
            .engine
            .release_record(&self.work.service, release)
            .await;
        match stored {
            Some(r) => {
                let secrets = if r.spec.secret_names == self.work.spec.secret_names {
                    self.work.secrets.clone()
                } else {
                    self.engine.secrets_for(&r.spec).unwrap_or_default()
                };
                self.ctx(release, &r.spec, &secrets)
            }
            None => self.ctx(release, &self.work.spec, &self.work.secrets),
        }
    }
}
