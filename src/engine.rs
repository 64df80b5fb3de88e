//! The engine: runs a job's six phases, reports each change to a [`Sink`],
//! writes the job to the store as it goes, and unwinds a stack of undos when
//! a phase fails. Both front ends (CLI now, HTTP later) call it and render
//! its events; no deploy logic lives anywhere else.
//!
//! A deploy and a rollback are the same pipeline: a deploy's release comes
//! from a directory (Transfer copies it, Build builds it), a rollback's
//! release already exists (Transfer and Build are skipped).

use crate::cmd::{Cmd, Transport};
use crate::config::{DeployerConfig, Method};
use crate::error::{Failure, FailureKind};
use crate::health::{HealthCheck, Unhealthy};
use crate::host::RemoteLockError;
use crate::lock::{Holder, Lock};
use crate::model::*;
use crate::plan::{Plan, RegisterPlan, RunSpec, RuntimeKind};
use crate::release::{self, ServiceDirs};
use crate::runtime::ReleaseCtx;
use crate::secret::{Redactor, Secret};
use crate::site::{Site, TargetSpec};
use crate::store::Store;
use chrono::Utc;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Something that happened in a job, pushed to the front end as it happens.
#[derive(Clone, Debug)]
pub enum Event<'a> {
    PhaseStarted(PhaseName),
    PhaseFinished(&'a PhaseView),
    /// A line of progress worth showing (stopping a release, rolling back).
    Note(&'a str),
    JobFinished(&'a Job),
}

/// Receives a job's events (the CLI renders them; the API will stream them).
pub trait Sink: Send + Sync {
    fn event(&self, e: &Event);
}

/// How long the Build phase's own command may run (the spec's 10 minutes).
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);

/// Where a job's release comes from.
#[derive(Clone, Debug)]
enum Source {
    /// New content to copy from a directory.
    Dir(PathBuf),
    /// A release that exists already (a rollback).
    Existing(String),
}

/// A job to run: what a [`Plan`] or a rollback request becomes.
#[derive(Clone, Debug)]
struct Work {
    kind: JobKind,
    service: String,
    service_path: String,
    method: String,
    spec: RunSpec,
    secrets: Vec<(String, Secret)>,
    droplet_id: Option<i64>,
    register: RegisterPlan,
    keep_releases: usize,
    service_url: String,
    source: Source,
}

/// The undo of a step that changed something, pushed as the step succeeds.
enum Undo {
    RemoveRelease(ReleaseCtx),
    RemoveBuild(ReleaseCtx),
    StopNew(ReleaseCtx),
    RestartPrevious(ReleaseCtx),
}

/// The deploy engine.
pub struct Engine {
    config: DeployerConfig,
    state_dir: PathBuf,
    http: reqwest::Client,
    actor: String,
    lock_wait: Duration,
    target: TargetSpec,
}

impl Engine {
    pub fn new(
        config: DeployerConfig,
        state_dir: PathBuf,
        lock_wait: Duration,
        target: TargetSpec,
    ) -> Self {
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("HTTP client");
        Engine {
            config,
            state_dir,
            http,
            actor: actor(),
            lock_wait,
            target,
        }
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Deploys a plan. `Err` means the job never started (invalid input, the
    /// lock was busy); a job that ran is returned whether it succeeded or not.
    pub async fn deploy(&self, mut plan: Plan, sink: &dyn Sink) -> Result<Job, Failure> {
        let redactor = plan.redactor();
        let validation = Phase::pending(PhaseName::Validation);
        let started = Utc::now();
        sink.event(&Event::PhaseStarted(PhaseName::Validation));
        let site = match Site::connect(&self.target, &self.state_dir).await {
            Ok(site) => site,
            Err(f) => {
                let failed = finish_phase(validation, started, Err(f.message.clone()), &redactor);
                sink.event(&Event::PhaseFinished(&failed.view()));
                return Err(f);
            }
        };
        let checked = self.validate(&site, &mut plan).await;
        let mut validation = finish_phase(validation, started, checked.clone(), &redactor);
        sink.event(&Event::PhaseFinished(&validation.view()));
        checked.map_err(|e| Failure::invalid(redactor.redact(&e)))?;
        let job_id = new_job_id();
        let lock = self.lock(&plan.service_name, &job_id).await?;
        if lock.waited {
            // Another deploy ran meanwhile: what was checked may have changed.
            let started = Utc::now();
            let checked = self.validate(&site, &mut plan).await;
            validation = finish_phase(
                Phase::pending(PhaseName::Validation),
                started,
                checked.clone(),
                &redactor,
            );
            sink.event(&Event::PhaseFinished(&validation.view()));
            checked.map_err(|e| Failure::invalid(redactor.redact(&e)))?;
        }
        let work = Work {
            kind: JobKind::Deploy,
            service_url: plan.service_url(),
            service: plan.service_name,
            service_path: plan.source.display().to_string(),
            method: plan.spec.runtime.as_str().to_string(),
            spec: plan.spec,
            secrets: plan.secrets,
            droplet_id: plan.droplet_id,
            register: plan.register,
            keep_releases: plan.keep_releases,
            source: Source::Dir(plan.source),
        };
        let job = self
            .run(&site, work, validation, (lock, job_id), sink)
            .await;
        site.close().await;
        job
    }

    /// Takes a service's deploy lock for a job, or says who holds it.
    async fn lock(&self, service: &str, job_id: &str) -> Result<Lock, Failure> {
        let holder = Holder {
            job_id: job_id.to_string(),
            pid: std::process::id(),
            actor: self.actor.clone(),
            since: Utc::now(),
        };
        let dirs = ServiceDirs::new(&self.state_dir, service);
        Lock::acquire(&dirs.lock_file(), &holder, self.lock_wait)
            .await
            .map_err(|e| match e {
                crate::lock::LockError::Busy(who) => Failure::new(
                    FailureKind::Locked,
                    format!(
                        "service '{service}' is locked by another deploy: {who}; try again when it finishes, or pass --wait SECONDS"
                    ),
                ),
                other => Failure::internal(other.to_string()),
            })
    }

    /// Validation: checks that need the target (no writes). Resolves `auto`.
    async fn validate(&self, site: &Site, plan: &mut Plan) -> Result<String, String> {
        let runtime = match plan.method {
            Method::Process if !site.host.is_local() => {
                return Err(format!(
                    "the process method runs services on this machine only; use docker on {}",
                    site.host.name()
                ));
            }
            Method::Process => RuntimeKind::Process,
            Method::Docker => {
                site.docker().engine_version().await.map_err(|e| {
                    format!("the docker method needs a Docker engine, and none answers: {e}")
                })?;
                RuntimeKind::Docker
            }
            Method::Systemd => {
                site.systemd().available().await?;
                RuntimeKind::Systemd
            }
            Method::Auto => match site.docker().engine_version().await {
                Ok(_) => RuntimeKind::Docker,
                Err(_) if site.host.is_local() => RuntimeKind::Process,
                Err(_) => RuntimeKind::Systemd,
            },
        };
        plan.spec.runtime = runtime;
        match runtime {
            RuntimeKind::Process | RuntimeKind::Systemd => {
                if plan
                    .spec
                    .start
                    .as_deref()
                    .is_none_or(|s| s.trim().is_empty())
                {
                    return Err(format!(
                        "the {} method needs a start command: set `start` in {} or pass --start",
                        runtime.as_str(),
                        plan.source.join(crate::config::MANIFEST_FILE).display()
                    ));
                }
            }
            RuntimeKind::Docker => {
                let dockerfile = plan.source.join(&plan.spec.dockerfile);
                if !dockerfile.is_file() {
                    return Err(format!(
                        "the docker method needs {}, which is missing",
                        dockerfile.display()
                    ));
                }
            }
        }
        let port = plan.spec.port;
        let port_note = if !site.port_in_use(port).await {
            format!("port {port} free")
        } else {
            let dirs = site.dirs(&plan.service_name);
            match site
                .running_releases(&dirs, &plan.service_name)
                .await
                .iter()
                .find(|(_, p)| *p == port)
            {
                Some((rel, _)) => format!("port {port} held by this service's release {rel}"),
                None => {
                    return Err(format!(
                        "port {port} is in use by another program; stop it or choose another port"
                    ));
                }
            }
        };
        Ok(format!(
            "Service files validated: method {} on {}, {port_note}",
            runtime.as_str(),
            site.host.name()
        ))
    }

    /// Rolls a service back to an earlier release (the one before current,
    /// or `to`). Runs as a job: Start Service, Verify Health and Register.
    pub async fn rollback(
        &self,
        service: &str,
        to: Option<&str>,
        sink: &dyn Sink,
    ) -> Result<Job, Failure> {
        crate::plan::validate_name(service)?;
        let store = self.open_store_existing().await?;
        let releases = store.releases(service).await?;
        if releases.is_empty() {
            return Err(Failure::not_found(format!(
                "no releases of service '{service}'"
            )));
        }
        let site = Site::connect(&self.target, &self.state_dir).await?;
        let dirs = site.dirs(service);
        // Under the lock, so `current` cannot change while the target is chosen.
        let job_id = new_job_id();
        let lock = self.lock(service, &job_id).await?;
        let releases = store.releases(service).await?;
        let current = site.host.current(&dirs).await;
        let target = match to {
            Some(id) => releases.iter().find(|r| r.id == id).ok_or_else(|| {
                Failure::not_found(format!("service '{service}' has no release '{id}'"))
            })?,
            None => releases
                .iter()
                .find(|r| r.status == ReleaseStatus::Previous && Some(&r.id) != current.as_ref())
                .ok_or_else(|| {
                    Failure::new(
                        FailureKind::NotFound,
                        format!("service '{service}' has no previous release to roll back to"),
                    )
                })?,
        };
        if Some(&target.id) == current.as_ref() {
            return Err(Failure::invalid(format!(
                "release {} is already current",
                target.id
            )));
        }
        if !site
            .host
            .exec(
                &Cmd::new("test").args(["-d", &dirs.release(&target.id).to_string_lossy()]),
                Duration::from_secs(30),
            )
            .await
            .is_ok_and(|o| o.success())
        {
            return Err(Failure::not_found(format!(
                "release {} was pruned; its files are gone",
                target.id
            )));
        }
        let secrets =
            crate::plan::resolve_secrets(&target.spec.secret_names, &self.config, &|k| {
                std::env::var(k).ok()
            })?;
        let target_job = store.job(&target.job_id).await?;
        store.close().await;
        let droplet_id = target_job.as_ref().and_then(|j| j.droplet_id);
        let register = match (&self.config.registry_url, droplet_id) {
            (Some(url), Some(id)) => RegisterPlan::To {
                registry_url: url.trim_end_matches('/').to_string(),
                droplet_id: id,
            },
            (None, _) => RegisterPlan::Skip {
                reason: "no registry configured (registry_url / REGISTRY_URL)".into(),
            },
            (Some(_), None) => RegisterPlan::Skip {
                reason: "the release was deployed without a droplet_id".into(),
            },
        };
        let started = Utc::now();
        let validation = finish_phase(
            Phase::pending(PhaseName::Validation),
            started,
            Ok(format!("release {} exists; rolling back to it", target.id)),
            &Redactor::default(),
        );
        sink.event(&Event::PhaseFinished(&validation.view()));
        let address = crate::plan::service_address(&self.config);
        let work = Work {
            kind: JobKind::Rollback,
            service: service.to_string(),
            service_path: target_job
                .as_ref()
                .map(|j| j.service_path.clone())
                .unwrap_or_default(),
            method: target.spec.runtime.as_str().to_string(),
            service_url: format!("http://{address}:{}", target.spec.port),
            spec: target.spec.clone(),
            secrets,
            droplet_id,
            register,
            keep_releases: usize::MAX,
            source: Source::Existing(target.id.clone()),
        };
        let job = self
            .run(&site, work, validation, (lock, job_id), sink)
            .await;
        site.close().await;
        job
    }

    /// Stops every running release of a service (it stays deployed:
    /// `current` is kept, and a later deploy or rollback starts it again).
    pub async fn stop(&self, service: &str) -> Result<Vec<String>, Failure> {
        crate::plan::validate_name(service)?;
        let store = self.open_store_existing().await?;
        let releases = store.releases(service).await?;
        if releases.is_empty() {
            return Err(Failure::not_found(format!(
                "no releases of service '{service}'"
            )));
        }
        let job_id = new_job_id();
        let _lock = self.lock(service, &job_id).await?;
        let site = Site::connect(&self.target, &self.state_dir).await?;
        let dirs = site.dirs(service);
        let started = std::time::Instant::now();
        let mut stopped = Vec::new();
        for (id, _) in site.running_releases(&dirs, service).await {
            let Some(r) = releases.iter().find(|r| r.id == id) else {
                continue;
            };
            let ctx = ReleaseCtx {
                service: service.to_string(),
                release: id.clone(),
                dirs: dirs.clone(),
                spec: r.spec.clone(),
                secrets: Vec::new(),
            };
            site.runtime(r.spec.runtime)
                .stop(&ctx)
                .await
                .map_err(|e| Failure::internal(format!("stopping release {id}: {e}")))?;
            stopped.push(id);
        }
        store
            .audit(&AuditEntry {
                at: Utc::now(),
                actor: self.actor.clone(),
                action: "stop".into(),
                service_name: service.to_string(),
                job_id: None,
                outcome: "success".into(),
                duration_ms: Some(started.elapsed().as_millis() as i64),
                details: if stopped.is_empty() {
                    "nothing was running".into()
                } else {
                    format!("stopped {}", stopped.join(", "))
                },
            })
            .await?;
        store.close().await;
        Ok(stopped)
    }

    async fn open_store_existing(&self) -> Result<Store, Failure> {
        if !self.state_dir.join("deployer.db").exists() {
            return Err(Failure::not_found(format!(
                "no deployer state in {} (nothing was deployed with this state directory)",
                self.state_dir.display()
            )));
        }
        Ok(Store::open(&self.state_dir).await?)
    }

    /// Takes the lock, creates the job and runs the phases after Validation.
    async fn run(
        &self,
        site: &Site,
        work: Work,
        validation: Phase,
        (lock, job_id): (Lock, String),
        sink: &dyn Sink,
    ) -> Result<Job, Failure> {
        let dirs = site.dirs(&work.service);
        let holder = Holder {
            job_id: job_id.clone(),
            pid: std::process::id(),
            actor: self.actor.clone(),
            since: Utc::now(),
        };
        let stale = site.host.lock(&dirs, &holder).await.map_err(|e| match e {
            RemoteLockError::Busy(who) => Failure::new(
                FailureKind::Locked,
                format!(
                    "service '{}' on {} is locked by another deployer: {who}",
                    work.service,
                    site.host.name()
                ),
            ),
            RemoteLockError::Failed(msg) => Failure::new(FailureKind::Unreachable, msg),
        })?;
        // Refresh the host's lock while the job runs; a deployer that dies
        // stops refreshing it and the next one takes it over.
        let heartbeat = {
            let (host, dirs) = (site.host.clone(), dirs.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(20)).await;
                    host.heartbeat(&dirs).await;
                }
            })
        };
        let result = self
            .run_locked(site, work, validation, (lock, job_id), &dirs, stale, sink)
            .await;
        heartbeat.abort();
        site.host.unlock(&dirs).await;
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_locked(
        &self,
        site: &Site,
        work: Work,
        validation: Phase,
        (lock, job_id): (Lock, String),
        dirs: &ServiceDirs,
        stale: Option<String>,
        sink: &dyn Sink,
    ) -> Result<Job, Failure> {
        let dirs = dirs.clone();
        let store = Store::open(&self.state_dir).await?;
        if let Some(old) = stale {
            let msg = format!("took over a stale lock on {}: {old}", site.host.name());
            sink.event(&Event::Note(&msg));
        }
        // Holding the lock, no other job of this service can be running: any
        // marked running had its deployer die mid-way.
        let interrupted = store.mark_interrupted(&work.service).await?;
        if !interrupted.is_empty() {
            let msg = format!(
                "earlier job {} was interrupted; marked failed",
                interrupted.join(", ")
            );
            sink.event(&Event::Note(&msg));
        }
        if let Some(dead) = &lock.took_over {
            store
                .audit(&AuditEntry {
                    at: Utc::now(),
                    actor: self.actor.clone(),
                    action: "lock".into(),
                    service_name: work.service.clone(),
                    job_id: Some(job_id.clone()),
                    outcome: "taken over".into(),
                    duration_ms: None,
                    details: format!("the lock's holder, {dead}, had died"),
                })
                .await?;
        }
        let redactor = Redactor::new(work.secrets.iter().map(|(_, s)| s.clone()));
        let previous = site.host.current(&dirs).await;
        let mut phases = vec![validation];
        phases.extend(PhaseName::ALL[1..].iter().map(|n| Phase::pending(*n)));
        let job = Job {
            deploy_job_id: job_id,
            kind: work.kind,
            service_name: work.service.clone(),
            service_path: work.service_path.clone(),
            status: JobStatus::Running,
            droplet_id: work.droplet_id,
            service_port: work.spec.port,
            service_url: None,
            deployment_method: work.method.clone(),
            release: None,
            previous_release: previous.clone(),
            phases: phases.iter().map(Phase::view).collect(),
            registration: None,
            rollback: None,
            started_at: phases[0].view().started_at.unwrap_or_else(Utc::now),
            completed_at: None,
            duration_seconds: None,
            success: false,
            error: None,
            failure: None,
            actor: self.actor.clone(),
            transfer: None,
        };
        store.save_job(&job).await?;
        let mut run = JobRun {
            engine: self,
            site,
            store,
            sink,
            redactor,
            phases,
            job,
            undo: Vec::new(),
            dirs,
            work,
        };
        run.execute(previous).await;
        let job = run.job.clone();
        run.store.close().await;
        drop(lock);
        Ok(job)
    }

    async fn release_record(store: &Store, service: &str, id: &str) -> Option<Release> {
        store
            .releases(service)
            .await
            .ok()?
            .into_iter()
            .find(|r| r.id == id)
    }
}

/// One job in progress: its phases, its undo stack, and where it reports.
struct JobRun<'a> {
    engine: &'a Engine,
    site: &'a Site,
    store: Store,
    sink: &'a dyn Sink,
    redactor: Redactor,
    phases: Vec<Phase>,
    job: Job,
    undo: Vec<Undo>,
    dirs: ServiceDirs,
    work: Work,
}

/// A phase's failure: its kind and message.
type PhaseResult = Result<String, (FailureKind, String)>;

impl JobRun<'_> {
    async fn save(&mut self) {
        self.job.phases = self.phases.iter().map(Phase::view).collect();
        if let Err(e) = self.store.save_job(&self.job).await {
            let msg = format!("warning: {e}");
            self.sink.event(&Event::Note(&msg));
        }
    }

    fn index(name: PhaseName) -> usize {
        PhaseName::ALL.iter().position(|p| *p == name).unwrap_or(0)
    }

    async fn begin(&mut self, name: PhaseName) -> chrono::DateTime<Utc> {
        let now = Utc::now();
        self.phases[Self::index(name)].state = PhaseState::Running { started_at: now };
        self.save().await;
        self.sink.event(&Event::PhaseStarted(name));
        now
    }

    async fn end(
        &mut self,
        name: PhaseName,
        started: chrono::DateTime<Utc>,
        result: Result<String, String>,
    ) {
        let i = Self::index(name);
        self.phases[i] = finish_phase(self.phases[i].clone(), started, result, &self.redactor);
        self.save().await;
        let view = self.phases[i].view();
        self.sink.event(&Event::PhaseFinished(&view));
    }

    async fn skip(&mut self, name: PhaseName, reason: String) {
        let i = Self::index(name);
        self.phases[i].state = PhaseState::Skipped { reason };
        self.save().await;
        let view = self.phases[i].view();
        self.sink.event(&Event::PhaseFinished(&view));
    }

    async fn note(&self, text: String) {
        self.sink.event(&Event::Note(&self.redactor.redact(&text)));
    }

    /// Runs one phase with `f`, recording its outcome.
    async fn phase<F, Fut>(&mut self, name: PhaseName, f: F) -> Result<(), (FailureKind, String)>
    where
        F: FnOnce(&mut Self) -> Fut,
        Fut: std::future::Future<Output = PhaseResult>,
    {
        let started = self.begin(name).await;
        // The closure borrows `self` mutably only while it builds its future;
        // phases that need `self` inside do their work through the helpers.
        let result = f(self).await;
        self.end(name, started, result.clone().map_err(|(_, e)| e))
            .await;
        result.map(|_| ())
    }

    fn ctx(&self, release: &str, spec: &RunSpec, secrets: &[(String, Secret)]) -> ReleaseCtx {
        ReleaseCtx {
            service: self.work.service.clone(),
            release: release.to_string(),
            dirs: self.dirs.clone(),
            spec: spec.clone(),
            secrets: secrets.to_vec(),
        }
    }

    async fn execute(&mut self, previous: Option<String>) {
        let started = std::time::Instant::now();
        let outcome = self.pipeline(previous.clone()).await;
        let (failure, error) = match outcome {
            Ok(()) => (None, None),
            Err((kind, msg)) => (Some(kind), Some(self.redactor.redact(&msg))),
        };
        self.job.completed_at = Some(Utc::now());
        self.job.duration_seconds = Some(started.elapsed().as_millis() as f64 / 1000.0);
        self.job.success = failure.is_none();
        self.job.status = if failure.is_none() {
            JobStatus::Completed
        } else {
            JobStatus::Failed
        };
        self.job.failure = failure.map(|f| f.as_str().to_string());
        self.job.error = error;
        self.save().await;
        let action = match self.work.kind {
            JobKind::Deploy => "deploy",
            JobKind::Rollback => "rollback",
        };
        let details = match (&self.job.error, &self.job.rollback) {
            (None, _) => format!(
                "release {} is current",
                self.job.release.as_deref().unwrap_or("?")
            ),
            (Some(e), Some(rb)) => format!("{}; {}", first_line(e), rb.details),
            (Some(e), None) => first_line(e).to_string(),
        };
        let entry = AuditEntry {
            at: Utc::now(),
            actor: self.engine.actor.clone(),
            action: action.into(),
            service_name: self.work.service.clone(),
            job_id: Some(self.job.deploy_job_id.clone()),
            outcome: if self.job.success {
                "success".into()
            } else {
                format!("failed ({})", self.job.failure.as_deref().unwrap_or("?"))
            },
            duration_ms: Some(started.elapsed().as_millis() as i64),
            details: self.redactor.redact(&details),
        };
        if let Err(e) = self.store.audit(&entry).await {
            self.note(format!("warning: {e}")).await;
        }
        let host_line = format!(
            "{} actor={} action={} job={} release={} outcome={:?} duration_ms={} details={:?}",
            entry.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            entry.actor,
            entry.action,
            self.job.deploy_job_id,
            self.job.release.as_deref().unwrap_or("-"),
            entry.outcome,
            entry.duration_ms.unwrap_or(0),
            entry.details,
        );
        if let Err(e) = self.site.host.audit(&self.dirs, &host_line).await {
            self.note(format!("warning: {e}")).await;
        }
        let job = self.job.clone();
        self.sink.event(&Event::JobFinished(&job));
    }

    /// Transfer → Build → Start Service → Verify Health → Register, unwinding
    /// the undo stack when one of the middle phases fails.
    async fn pipeline(&mut self, previous: Option<String>) -> Result<(), (FailureKind, String)> {
        let spec = self.work.spec.clone();
        let secrets = self.work.secrets.clone();

        // Transfer.
        let release = match self.work.source.clone() {
            Source::Dir(src) => {
                let started = self.begin(PhaseName::Transfer).await;
                match self.transfer(&src, &spec, previous.as_deref()).await {
                    Ok((id, details)) => {
                        self.end(PhaseName::Transfer, started, Ok(details)).await;
                        id
                    }
                    Err(e) => {
                        self.end(PhaseName::Transfer, started, Err(e.clone())).await;
                        self.skip_rest(PhaseName::Build, "Transfer failed").await;
                        return Err((FailureKind::Transfer, e));
                    }
                }
            }
            Source::Existing(id) => {
                self.skip(PhaseName::Transfer, format!("existing release {id}"))
                    .await;
                id
            }
        };
        self.job.release = Some(release.clone());
        let ctx = self.ctx(&release, &spec, &secrets);
        if matches!(self.work.source, Source::Dir(_)) {
            self.undo.push(Undo::RemoveRelease(ctx.clone()));
        }

        let result = self.build_start_verify(&ctx, previous.as_deref()).await;
        if let Err((kind, err)) = result {
            let record = self.unwind(&release, previous.as_deref()).await;
            let restored = record.success;
            self.job.rollback = Some(record);
            if matches!(self.work.source, Source::Dir(_)) {
                let _ = self
                    .store
                    .set_release_status(&self.work.service, &release, ReleaseStatus::Failed)
                    .await;
            }
            self.skip_rest(PhaseName::Register, "deploy failed").await;
            let kind = if restored {
                kind
            } else {
                FailureKind::RollbackFailed
            };
            return Err((kind, err));
        }

        // Healthy: make it current, remember the previous one, prune.
        self.site
            .host
            .switch_current(&self.dirs, &release)
            .await
            .map_err(|e| {
                (
                    FailureKind::Internal,
                    format!("switching current to {release}: {e}"),
                )
            })?;
        let _ = self
            .store
            .set_release_status(&self.work.service, &release, ReleaseStatus::Current)
            .await;
        if let Some(prev) = previous.as_deref().filter(|p| *p != release) {
            let _ = self
                .store
                .set_release_status(&self.work.service, prev, ReleaseStatus::Previous)
                .await;
        }
        self.job.service_url = Some(self.work.service_url.clone());
        self.prune(&release, previous.as_deref()).await;

        // Register.
        match self.work.register.clone() {
            RegisterPlan::Skip { reason } => {
                self.skip(PhaseName::Register, reason).await;
                Ok(())
            }
            RegisterPlan::To {
                registry_url,
                droplet_id,
            } => {
                let started = self.begin(PhaseName::Register).await;
                let result = crate::registry::register(
                    &self.engine.http,
                    &registry_url,
                    droplet_id,
                    &self.work.service,
                    &self.work.service_url,
                )
                .await;
                match result {
                    Ok(reg) => {
                        self.job.registration = Some(reg);
                        self.end(
                            PhaseName::Register,
                            started,
                            Ok(format!("Registered as Droplet #{droplet_id}")),
                        )
                        .await;
                        Ok(())
                    }
                    Err(e) => {
                        self.end(PhaseName::Register, started, Err(e.clone())).await;
                        Err((
                            FailureKind::Register,
                            format!(
                                "{e} (the service is deployed and healthy; only registration failed)"
                            ),
                        ))
                    }
                }
            }
        }
    }

    async fn transfer(
        &mut self,
        src: &Path,
        spec: &RunSpec,
        previous: Option<&str>,
    ) -> Result<(String, String), String> {
        let hash =
            release::content_hash(src).map_err(|e| format!("reading {}: {e}", src.display()))?;
        let id = release::new_release_id(&hash, &self.dirs);
        let stats = self
            .site
            .host
            .put_release(src, &self.dirs, &id, previous)
            .await?;
        self.store
            .save_release(&Release {
                service_name: self.work.service.clone(),
                id: id.clone(),
                status: ReleaseStatus::Pending,
                job_id: self.job.deploy_job_id.clone(),
                content_hash: hash,
                created_at: Utc::now(),
                spec: spec.clone(),
            })
            .await
            .map_err(|e| e.to_string())?;
        let details = format!(
            "{} files ({}) copied to {}",
            stats.files,
            human_bytes(stats.bytes),
            self.dirs.release(&id).display()
        );
        self.job.transfer = Some(stats);
        Ok((id, details))
    }

    async fn build_start_verify(
        &mut self,
        ctx: &ReleaseCtx,
        previous: Option<&str>,
    ) -> Result<(), (FailureKind, String)> {
        let runtime = self.site.runtime(ctx.spec.runtime);

        // Build.
        if matches!(self.work.source, Source::Existing(_)) {
            self.skip(PhaseName::Build, "existing release: already built".into())
                .await;
        } else if ctx.spec.build.is_none() && ctx.spec.runtime == RuntimeKind::Process {
            self.skip(PhaseName::Build, "no build command".into()).await;
        } else {
            let c = ctx.clone();
            let host = self.site.host.clone();
            let res = self
                .phase(PhaseName::Build, |_| async move {
                    let mut details = Vec::new();
                    if let Some(build) = &c.spec.build {
                        run_build_command(&*host, &c, build).await?;
                        details.push(format!("ran `{build}`"));
                    }
                    if let Some(d) = runtime
                        .build(&c)
                        .await
                        .map_err(|e| (FailureKind::Build, e))?
                    {
                        details.push(d);
                    }
                    Ok(details.join("; "))
                })
                .await;
            if res.is_ok() {
                self.undo.push(Undo::RemoveBuild(ctx.clone()));
            }
            if let Err(e) = res {
                self.skip_rest(PhaseName::StartService, "Build failed")
                    .await;
                return Err(e);
            }
        }

        // Start Service: stop whatever of this service runs, then start.
        let started = self.begin(PhaseName::StartService).await;
        let running = self
            .site
            .running_releases(&self.dirs, &self.work.service)
            .await;
        let mut stopped = Vec::new();
        for (rel, _) in &running {
            if *rel == ctx.release {
                continue;
            }
            let prev_ctx = self.previous_ctx(rel).await;
            self.note(format!("stopping release {rel}")).await;
            if let Err(e) = self
                .site
                .runtime(prev_ctx.spec.runtime)
                .stop(&prev_ctx)
                .await
            {
                let err = format!("stopping the running release {rel}: {e}");
                self.end(PhaseName::StartService, started, Err(err.clone()))
                    .await;
                self.skip_rest(PhaseName::VerifyHealth, "Start Service failed")
                    .await;
                return Err((FailureKind::Start, err));
            }
            stopped.push(rel.clone());
        }
        // The release to bring back on failure: `current`, whether or not it
        // was running (a crashed current release is restarted too).
        if let Some(prev) = previous.filter(|p| *p != ctx.release) {
            let prev_ctx = self.previous_ctx(prev).await;
            self.undo.push(Undo::RestartPrevious(prev_ctx));
        }
        match runtime.start(ctx).await {
            Ok(details) => {
                self.undo.push(Undo::StopNew(ctx.clone()));
                self.end(PhaseName::StartService, started, Ok(details))
                    .await;
            }
            Err(e) => {
                // A half-started container or process is cleaned up too.
                self.undo.push(Undo::StopNew(ctx.clone()));
                self.end(PhaseName::StartService, started, Err(e.clone()))
                    .await;
                self.skip_rest(PhaseName::VerifyHealth, "Start Service failed")
                    .await;
                return Err((FailureKind::Start, e));
            }
        }

        // Verify Health.
        let check = health_check(&ctx.spec, &self.site.health_host());
        let started = self.begin(PhaseName::VerifyHealth).await;
        let result = check
            .wait(&self.engine.http, || runtime.liveness(ctx))
            .await;
        let summary = result.as_ref().map_err(ToString::to_string).map(|h| {
            format!(
                "Service is healthy: {} answered 2xx after {} ms ({} checks)",
                check.url,
                h.after.as_millis(),
                h.checks
            )
        });
        self.end(PhaseName::VerifyHealth, started, summary).await;
        match result {
            Ok(_) => Ok(()),
            // A service that dies at once failed to start, whatever phase saw it.
            Err(Unhealthy::Exited(e)) => Err((FailureKind::Start, e)),
            Err(Unhealthy::Failed(e)) => Err((FailureKind::Health, e)),
        }
    }

    /// A context for an earlier release, from its stored spec (or, when the
    /// store has no record of it, from this job's spec).
    async fn previous_ctx(&self, release: &str) -> ReleaseCtx {
        match Engine::release_record(&self.store, &self.work.service, release).await {
            Some(r) => {
                let secrets = if r.spec.secret_names == self.work.spec.secret_names {
                    self.work.secrets.clone()
                } else {
                    crate::plan::resolve_secrets(&r.spec.secret_names, &self.engine.config, &|k| {
                        std::env::var(k).ok()
                    })
                    .unwrap_or_default()
                };
                self.ctx(release, &r.spec, &secrets)
            }
            None => self.ctx(release, &self.work.spec, &self.work.secrets),
        }
    }

    /// Runs the undo stack, newest first. Returns what the rollback did.
    async fn unwind(&mut self, failed: &str, previous: Option<&str>) -> RollbackRecord {
        let mut record = RollbackRecord {
            to_release: previous.map(str::to_string),
            from_release: failed.to_string(),
            success: true,
            details: match previous {
                // Failed before Start Service: the previous release was never stopped.
                Some(p) => format!("release {p} kept running"),
                None => "no previous release to restore".to_string(),
            },
        };
        while let Some(step) = self.undo.pop() {
            match step {
                Undo::StopNew(ctx) => {
                    self.note(format!("rollback: stopping release {}", ctx.release))
                        .await;
                    if let Err(e) = self.site.runtime(ctx.spec.runtime).stop(&ctx).await {
                        self.note(format!("rollback: {e}")).await;
                    }
                }
                Undo::RestartPrevious(ctx) => {
                    record.to_release = Some(ctx.release.clone());
                    let runtime = self.site.runtime(ctx.spec.runtime);
                    let alive = self
                        .site
                        .running_releases(&self.dirs, &self.work.service)
                        .await
                        .iter()
                        .any(|(r, _)| *r == ctx.release);
                    if alive {
                        record.details = format!("release {} kept running", ctx.release);
                        continue;
                    }
                    self.note(format!("rollback: restarting release {}", ctx.release))
                        .await;
                    let outcome = match runtime.start(&ctx).await {
                        Ok(_) => health_check(&ctx.spec, &self.site.health_host())
                            .wait(&self.engine.http, || runtime.liveness(&ctx))
                            .await
                            .map(|h| h.after)
                            .map_err(|e| e.to_string()),
                        Err(e) => Err(e),
                    };
                    match outcome {
                        Ok(after) => {
                            record.details = format!(
                                "rolled back to release {} (healthy after {} ms)",
                                ctx.release,
                                after.as_millis()
                            );
                        }
                        Err(e) => {
                            record.success = false;
                            record.details = format!(
                                "rollback to release {} FAILED, the service may be down: {}",
                                ctx.release,
                                self.redactor.redact(&e)
                            );
                        }
                    }
                    self.note(record.details.clone()).await;
                }
                Undo::RemoveBuild(ctx) => {
                    self.site.runtime(ctx.spec.runtime).remove_build(&ctx).await;
                }
                Undo::RemoveRelease(ctx) => {
                    if let Err(e) = self
                        .site
                        .host
                        .remove_release(&self.dirs, &ctx.release)
                        .await
                    {
                        self.note(format!("rollback: removing release {}: {e}", ctx.release))
                            .await;
                    }
                }
            }
        }
        record
    }

    async fn skip_rest(&mut self, from: PhaseName, why: &str) {
        for name in PhaseName::ALL[Self::index(from)..].iter() {
            if matches!(self.phases[Self::index(*name)].state, PhaseState::Pending) {
                self.skip(*name, format!("not run: {why}")).await;
            }
        }
    }

    /// Keeps the newest `keep_releases` good releases, plus current and the
    /// rollback target; removes the files (and images) of the rest.
    async fn prune(&mut self, current: &str, previous: Option<&str>) {
        let Ok(releases) = self.store.releases(&self.work.service).await else {
            return;
        };
        let mut kept = 0usize;
        for r in releases {
            let keep_always = r.id == current || Some(r.id.as_str()) == previous;
            match r.status {
                ReleaseStatus::Current | ReleaseStatus::Previous => {
                    kept += 1;
                    if keep_always || kept <= self.work.keep_releases {
                        continue;
                    }
                }
                ReleaseStatus::Failed if !keep_always => {
                    // Failed releases never count; their files went at rollback.
                    let _ = self.site.host.remove_release(&self.dirs, &r.id).await;
                    continue;
                }
                _ => continue,
            }
            let ctx = self.ctx(&r.id, &r.spec, &[]);
            self.site.runtime(r.spec.runtime).remove_build(&ctx).await;
            if self
                .site
                .host
                .remove_release(&self.dirs, &r.id)
                .await
                .is_ok()
            {
                let _ = self
                    .store
                    .set_release_status(&self.work.service, &r.id, ReleaseStatus::Removed)
                    .await;
            }
        }
    }
}

fn finish_phase(
    mut phase: Phase,
    started_at: chrono::DateTime<Utc>,
    result: Result<String, String>,
    redactor: &Redactor,
) -> Phase {
    let completed_at = Utc::now();
    phase.state = match result {
        Ok(details) => PhaseState::Success {
            started_at,
            completed_at,
            details: redactor.redact(&details),
        },
        Err(error) => PhaseState::Failed {
            started_at,
            completed_at,
            details: format!("{} failed", phase.name.as_str()),
            error: redactor.redact(&error),
        },
    };
    phase
}

fn health_check(spec: &RunSpec, host: &str) -> HealthCheck {
    HealthCheck {
        url: format!("http://{host}:{}{}", spec.port, spec.health.path),
        timeout: Duration::from_secs(spec.health.timeout_secs),
        retries: spec.health.retries,
    }
}

/// Runs the manifest's build command in the release directory, with the
/// service's plain environment (never its secrets).
async fn run_build_command(
    transport: &impl Transport,
    ctx: &ReleaseCtx,
    build: &str,
) -> Result<(), (FailureKind, String)> {
    let mut cmd = Cmd::new("/bin/sh").args(["-c", build]).cwd(ctx.dir());
    for (k, v) in ctx.base_env() {
        cmd = cmd.env(k, v);
    }
    let out = transport
        .exec(&cmd, BUILD_TIMEOUT)
        .await
        .map_err(|e| (FailureKind::Build, e.to_string()))?;
    if out.success() {
        Ok(())
    } else {
        Err((
            FailureKind::Build,
            format!(
                "build command `{build}` exited with code {}:\n{}",
                out.code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "signal".into()),
                out.tail(10)
            ),
        ))
    }
}

/// Whether nothing listens on a TCP port (any address).
pub fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
        && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// A job id like the spec's `deploy-abc12345`.
fn new_job_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Utc::now().timestamp_nanos_opt().unwrap_or_default() as u128);
    h.write_u32(std::process::id());
    format!("deploy-{:08x}", h.finish() as u32)
}

/// Who is deploying: `user@host`.
pub fn actor() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{user}@{host}")
}
