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
use crate::health::{HealthCheck, Probe, Unhealthy};
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
    /// Bytes of a release sent so far (uploads only).
    TransferProgress {
        sent: u64,
        total: u64,
    },
    /// A phase finished on one host of a rollout.
    HostPhaseFinished(&'a str, &'a PhaseView),
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
    rollout: crate::plan::RolloutSpec,
    /// Set for a rollout, so every host gets the same release id.
    release_id: Option<String>,
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
    /// Where deploys go: one target, or several for a rollout.
    targets: Vec<TargetSpec>,
}

impl Engine {
    pub fn new(
        config: DeployerConfig,
        state_dir: PathBuf,
        lock_wait: Duration,
        targets: Vec<TargetSpec>,
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
            targets,
        }
    }

    /// Rollback and stop act on one host: the first target.
    fn first_target(&self) -> &TargetSpec {
        self.targets.first().unwrap_or(&TargetSpec::Local)
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Deploys a plan. `Err` means the job never started (invalid input, the
    /// lock was busy); a job that ran is returned whether it succeeded or not.
    pub async fn deploy(&self, plan: Plan, sink: &dyn Sink) -> Result<Job, Failure> {
        self.deploy_as(plan, None, sink).await
    }

    /// [`Engine::deploy`] under a job id chosen by the caller (the HTTP API
    /// has already stored the job as pending under it).
    pub async fn deploy_as(
        &self,
        mut plan: Plan,
        job_id: Option<String>,
        sink: &dyn Sink,
    ) -> Result<Job, Failure> {
        let redactor = plan.redactor();
        let started = Utc::now();
        sink.event(&Event::PhaseStarted(PhaseName::Validation));
        let mut sites = Vec::with_capacity(self.targets.len());
        for target in &self.targets {
            match Site::connect(target, &self.state_dir).await {
                Ok(site) => sites.push(site),
                Err(f) => {
                    let pending = Phase::pending(PhaseName::Validation);
                    let failed = finish_phase(pending, started, Err(f.message.clone()), &redactor);
                    sink.event(&Event::PhaseFinished(&failed.view()));
                    close_all(&sites).await;
                    return Err(f);
                }
            }
        }
        let job_id = job_id.unwrap_or_else(new_job_id);
        // A deploy that may wait (`--wait`, every job of the HTTP API) takes
        // the lock first and validates under it, when no other deploy of the
        // service runs: checked earlier, a running deploy restarting the
        // service could make its own port look taken. A deploy that may not
        // wait validates first, so a refusal writes nothing at all.
        let mut lock = None;
        if !self.lock_wait.is_zero() {
            match self.lock(&plan.service_name, &job_id).await {
                Ok(l) => lock = Some(l),
                Err(f) => {
                    close_all(&sites).await;
                    return Err(f);
                }
            }
        }
        // Timed from here: waiting for the lock is not validating.
        let started = Utc::now();
        let validation = match self
            .validate_all(&sites, &mut plan, started, &redactor)
            .await
        {
            Ok(v) => v,
            Err(f) => {
                sink.event(&Event::PhaseFinished(&validation_view(
                    started, &f, &redactor,
                )));
                close_all(&sites).await;
                return Err(f);
            }
        };
        sink.event(&Event::PhaseFinished(&validation.view()));
        let lock = match lock {
            Some(l) => l,
            None => match self.lock(&plan.service_name, &job_id).await {
                Ok(l) => l,
                Err(f) => {
                    close_all(&sites).await;
                    return Err(f);
                }
            },
        };
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
            rollout: plan.rollout,
            release_id: None,
        };
        let job = self
            .run(&sites, work, validation, (lock, job_id), sink)
            .await;
        close_all(&sites).await;
        job
    }

    /// Validation on every host; the phase fails if any host fails it. The
    /// caller reports the phase once it knows the outcome.
    async fn validate_all(
        &self,
        sites: &[Site],
        plan: &mut Plan,
        started: chrono::DateTime<Utc>,
        redactor: &Redactor,
    ) -> Result<Phase, Failure> {
        let mut details = Vec::new();
        let mut result = Ok(());
        for site in sites {
            match self.validate(site, plan).await {
                Ok(d) => details.push(d),
                Err(e) if sites.len() > 1 => {
                    result = Err(format!("{}: {e}", site.host.name()));
                    break;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let checked = result.map(|_| details.join("; "));
        let phase = finish_phase(
            Phase::pending(PhaseName::Validation),
            started,
            checked.clone(),
            redactor,
        );
        checked
            .map(|_| phase)
            .map_err(|e| Failure::invalid(redactor.redact(&e)))
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
                site.docker_engine().await.map_err(|e| {
                    format!("the docker method needs a Docker engine, and none answers: {e}")
                })?;
                RuntimeKind::Docker
            }
            Method::Systemd => {
                site.systemd().available().await?;
                RuntimeKind::Systemd
            }
            Method::Auto => match site.docker_engine().await {
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
        // Read again under the lock below; here it only refuses an unknown service.
        let (store, _) = self.known_releases(service).await?;
        let site = Site::connect(self.first_target(), &self.state_dir).await?;
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
                        FailureKind::Conflict,
                        format!("service '{service}' has no previous release to roll back to"),
                    )
                })?,
        };
        if Some(&target.id) == current.as_ref() {
            return Err(Failure::new(
                FailureKind::Conflict,
                format!("release {} is already current", target.id),
            ));
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
            rollout: Default::default(),
            release_id: None,
        };
        let job = self
            .run(
                std::slice::from_ref(&site),
                work,
                validation,
                (lock, job_id),
                sink,
            )
            .await;
        site.close().await;
        job
    }

    /// Stops every running release of a service (it stays deployed:
    /// `current` is kept, and a later deploy or rollback starts it again).
    pub async fn stop(&self, service: &str) -> Result<Vec<String>, Failure> {
        let (store, releases) = self.known_releases(service).await?;
        let job_id = new_job_id();
        let _lock = self.lock(service, &job_id).await?;
        let site = Site::connect(self.first_target(), &self.state_dir).await?;
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

    /// The store and a service's releases; not found when it has none.
    async fn known_releases(&self, service: &str) -> Result<(Store, Vec<Release>), Failure> {
        crate::plan::validate_name(service)?;
        let store = self.open_store_existing().await?;
        let releases = store.releases(service).await?;
        if releases.is_empty() {
            return Err(Failure::not_found(format!(
                "no releases of service '{service}'"
            )));
        }
        Ok((store, releases))
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
        sites: &[Site],
        work: Work,
        validation: Phase,
        (lock, job_id): (Lock, String),
        sink: &dyn Sink,
    ) -> Result<Job, Failure> {
        let holder = Holder {
            job_id: job_id.clone(),
            pid: std::process::id(),
            actor: self.actor.clone(),
            since: Utc::now(),
        };
        // The lock on every host first: all or nothing.
        let mut locked: Vec<&Site> = Vec::new();
        let mut notes = Vec::new();
        for site in sites {
            let dirs = site.dirs(&work.service);
            let dead = |h: &Holder| h.actor == self.actor && !crate::lock::pid_alive(h.pid);
            match site.host.lock(&dirs, &holder, dead).await {
                Ok(stale) => {
                    locked.push(site);
                    if let Some(old) = stale {
                        notes.push(format!(
                            "took over a stale lock on {}: {old}",
                            site.host.name()
                        ));
                    }
                }
                Err(e) => {
                    for s in locked {
                        s.host.unlock(&s.dirs(&work.service)).await;
                    }
                    return Err(match e {
                        RemoteLockError::Busy(who) => Failure::new(
                            FailureKind::Locked,
                            format!(
                                "service '{}' on {} is locked by another deployer: {who}",
                                work.service,
                                site.host.name()
                            ),
                        ),
                        RemoteLockError::Failed(msg) => Failure::new(FailureKind::Unreachable, msg),
                    });
                }
            }
        }
        // Refresh the hosts' locks while the job runs; a deployer that dies
        // stops refreshing them and the next one takes them over.
        let beats: Vec<_> = sites
            .iter()
            .map(|s| (s.host.clone(), s.dirs(&work.service)))
            .collect();
        let heartbeat = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(20)).await;
                for (host, dirs) in &beats {
                    host.heartbeat(dirs).await;
                }
            }
        });
        let service = work.service.clone();
        let result = self
            .run_locked(sites, work, validation, (lock, job_id), notes, sink)
            .await;
        heartbeat.abort();
        for site in sites {
            site.host.unlock(&site.dirs(&service)).await;
        }
        result
    }

    async fn run_locked(
        &self,
        sites: &[Site],
        work: Work,
        validation: Phase,
        (lock, job_id): (Lock, String),
        notes: Vec<String>,
        sink: &dyn Sink,
    ) -> Result<Job, Failure> {
        let store = Store::open(&self.state_dir).await?;
        for note in &notes {
            sink.event(&Event::Note(note));
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
        let mut previous = Vec::with_capacity(sites.len());
        for site in sites {
            previous.push(site.host.current(&site.dirs(&work.service)).await);
        }
        let multi = sites.len() > 1;
        let mut job = self.new_job(&work, job_id, &validation, previous[0].clone());
        if multi {
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
        store.save_job(&job).await?;
        let book = JobBook {
            store: store.clone(),
            parent: tokio::sync::Mutex::new(job),
            multi,
        };
        let job = if multi {
            self.rollout(sites, &book, work, &validation, previous, sink)
                .await
        } else {
            let job_id = book.parent.lock().await.deploy_job_id.clone();
            let prev = previous[0].clone();
            let mut run = JobRun::new(
                self,
                &sites[0],
                &book,
                0,
                sink,
                work,
                &validation,
                prev.clone(),
                job_id,
            );
            run.execute(prev).await;
            run.job
        };
        store.close().await;
        drop(lock);
        Ok(job)
    }

    /// A job record as it starts: Validation done, the rest pending.
    fn new_job(
        &self,
        work: &Work,
        job_id: String,
        validation: &Phase,
        previous: Option<String>,
    ) -> Job {
        let mut phases = vec![validation.clone()];
        phases.extend(PhaseName::ALL[1..].iter().map(|n| Phase::pending(*n)));
        Job {
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
            previous_release: previous,
            phases: phases.iter().map(Phase::view).collect(),
            registration: None,
            rollback: None,
            started_at: validation.view().started_at.unwrap_or_else(Utc::now),
            completed_at: None,
            duration_seconds: None,
            success: false,
            error: None,
            failure: None,
            actor: self.actor.clone(),
            transfer: None,
            hosts: Vec::new(),
        }
    }

    /// Deploys to several hosts in waves: the canary wave first, then the
    /// rest, `parallel` at a time. A failed wave stops the rollout: its
    /// hosts are rolled back (each failed host by its own unwind, each
    /// switched one here), later waves are left untouched, and with
    /// `rollback_switched` the hosts of earlier waves are rolled back too.
    async fn rollout(
        &self,
        sites: &[Site],
        book: &JobBook,
        mut work: Work,
        validation: &Phase,
        previous: Vec<Option<String>>,
        sink: &dyn Sink,
    ) -> Job {
        let started = std::time::Instant::now();
        let job_id = book.parent.lock().await.deploy_job_id.clone();
        if let Source::Dir(src) = &work.source
            && let Ok(hash) = release::content_hash(src)
        {
            work.release_id = Some(release::new_release_id(
                &hash,
                &sites[0].dirs(&work.service),
            ));
        }
        let register = std::mem::replace(
            &mut work.register,
            RegisterPlan::Skip {
                reason: "registered once for all hosts, after the last wave".into(),
            },
        );
        let waves = work.rollout.waves(sites.len());
        let mut switched: Vec<usize> = Vec::new();
        let mut failure: Option<(FailureKind, String)> = None;
        for (w, wave) in waves.iter().enumerate() {
            if failure.is_some() {
                for &i in wave {
                    book.edit(|j| {
                        j.hosts[i].status = JobStatus::Skipped;
                        for p in j.hosts[i].phases.iter_mut().skip(1) {
                            p.status = "skipped".into();
                            p.details = "not run: the rollout stopped".into();
                        }
                    })
                    .await;
                }
                continue;
            }
            let names: Vec<String> = wave.iter().map(|&i| sites[i].host.name()).collect();
            let what = if w == 0 && work.rollout.canary > 0 {
                "canary wave"
            } else {
                "wave"
            };
            sink.event(&Event::Note(&format!(
                "{what} {}: {}",
                w + 1,
                names.join(", ")
            )));
            let runs = wave.iter().map(|&i| {
                let work = work.clone();
                let job_id = job_id.clone();
                let prev = previous[i].clone();
                async move {
                    let host_sink = HostSink {
                        inner: sink,
                        host: sites[i].host.name(),
                    };
                    let mut run = JobRun::new(
                        self,
                        &sites[i],
                        book,
                        i,
                        &host_sink,
                        work,
                        validation,
                        prev.clone(),
                        job_id,
                    );
                    run.execute(prev).await;
                    (i, run.job)
                }
            });
            let results = futures_util::future::join_all(runs).await;
            let failed: Vec<&(usize, Job)> = results.iter().filter(|(_, j)| !j.success).collect();
            if let Some((i, j)) = failed.first() {
                let kind = j
                    .failure
                    .as_deref()
                    .and_then(FailureKind::parse)
                    .unwrap_or(FailureKind::Internal);
                failure = Some((
                    kind,
                    format!(
                        "{}: {}",
                        sites[*i].host.name(),
                        j.error.clone().unwrap_or_default()
                    ),
                ));
                let mut to_revert: Vec<usize> = results
                    .iter()
                    .filter(|(_, j)| j.success)
                    .map(|(i, _)| *i)
                    .collect();
                if work.rollout.rollback_switched {
                    to_revert.extend(switched.iter().copied());
                }
                for i in to_revert {
                    let record = self
                        .revert(&sites[i], &work, previous[i].as_deref(), sink)
                        .await;
                    book.edit(|j| {
                        j.hosts[i].rollback = Some(record);
                    })
                    .await;
                }
            } else {
                switched.extend(wave.iter().copied());
            }
        }

        // Register once, when every host runs the release.
        let mut register_phase = Phase::pending(PhaseName::Register);
        let mut registration = None;
        if failure.is_some() {
            register_phase.state = PhaseState::Skipped {
                reason: "not run: the rollout failed".into(),
            };
        } else {
            match register {
                RegisterPlan::Skip { reason } => {
                    register_phase.state = PhaseState::Skipped { reason }
                }
                RegisterPlan::To {
                    registry_url,
                    droplet_id,
                } => {
                    let at = Utc::now();
                    let result = crate::registry::register(
                        &self.http,
                        &registry_url,
                        droplet_id,
                        &work.service,
                        &work.service_url,
                        self.config.registry_token.as_ref().map(|t| t.expose()),
                    )
                    .await;
                    let details = result
                        .as_ref()
                        .map(|_| format!("Registered as Droplet #{droplet_id}"))
                        .map_err(|e| e.clone());
                    register_phase =
                        finish_phase(register_phase, at, details, &Redactor::default());
                    match result {
                        Ok(r) => registration = Some(r),
                        Err(e) => failure = Some((FailureKind::Register, e)),
                    }
                }
            }
        }
        if let PhaseState::Skipped { .. } | PhaseState::Success { .. } | PhaseState::Failed { .. } =
            register_phase.state
        {
            sink.event(&Event::PhaseFinished(&register_phase.view()));
        }
        let release = work.release_id.clone();
        let job = book
            .edit(|j| {
                j.phases[5] = register_phase.view();
                j.registration = registration;
                j.release = release;
                j.completed_at = Some(Utc::now());
                j.duration_seconds = Some(started.elapsed().as_millis() as f64 / 1000.0);
                j.success = failure.is_none();
                j.status = if failure.is_none() {
                    JobStatus::Completed
                } else {
                    JobStatus::Failed
                };
                j.service_url = failure.is_none().then(|| work.service_url.clone());
                j.failure = failure.as_ref().map(|(k, _)| k.as_str().to_string());
                j.error = failure.as_ref().map(|(_, e)| e.clone());
            })
            .await;
        let deployed = job
            .hosts
            .iter()
            .filter(|h| h.status == JobStatus::Completed && h.rollback.is_none())
            .count();
        let entry = AuditEntry {
            at: Utc::now(),
            actor: self.actor.clone(),
            action: "deploy".into(),
            service_name: work.service.clone(),
            job_id: Some(job.deploy_job_id.clone()),
            outcome: if job.success {
                "success".into()
            } else {
                format!("failed ({})", job.failure.as_deref().unwrap_or("?"))
            },
            duration_ms: Some(started.elapsed().as_millis() as i64),
            details: format!(
                "release {} on {deployed} of {} hosts",
                job.release.as_deref().unwrap_or("?"),
                job.hosts.len()
            ),
        };
        if let Err(e) = book.store.audit(&entry).await {
            sink.event(&Event::Note(&format!("warning: {e}")));
        }
        sink.event(&Event::JobFinished(&job));
        job
    }

    /// Takes a host that a failed rollout had switched back to the release
    /// it ran before (or stops it, when it had none).
    async fn revert(
        &self,
        site: &Site,
        work: &Work,
        previous: Option<&str>,
        sink: &dyn Sink,
    ) -> RollbackRecord {
        let dirs = site.dirs(&work.service);
        let name = site.host.name();
        let new = site.host.current(&dirs).await.unwrap_or_default();
        let ctx = |release: &str, spec: &RunSpec| ReleaseCtx {
            service: work.service.clone(),
            release: release.to_string(),
            dirs: dirs.clone(),
            spec: spec.clone(),
            secrets: work.secrets.clone(),
        };
        let new_ctx = ctx(&new, &work.spec);
        sink.event(&Event::Note(&format!(
            "[{name}] rollback: stopping release {new}"
        )));
        let _ = site.runtime(work.spec.runtime).stop(&new_ctx).await;
        let Some(prev) = previous else {
            return RollbackRecord {
                to_release: None,
                from_release: new,
                success: true,
                details: format!("{name}: stopped; it had no previous release"),
            };
        };
        let store = Store::open(&self.state_dir).await.ok();
        let spec = match &store {
            Some(s) => Self::release_record(s, &work.service, prev)
                .await
                .map(|r| r.spec),
            None => None,
        }
        .unwrap_or_else(|| work.spec.clone());
        let prev_ctx = ctx(prev, &spec);
        let runtime = site.runtime(spec.runtime);
        let outcome = match runtime.start(&prev_ctx).await {
            Ok(_) => health_check(&spec, &site.health_host())
                .wait(probe(&self.http, site, &spec), || {
                    runtime.liveness(&prev_ctx)
                })
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        let record = match outcome.and(site.host.switch_current(&dirs, prev).await) {
            Ok(_) => RollbackRecord {
                to_release: Some(prev.to_string()),
                from_release: new,
                success: true,
                details: format!("{name}: rolled back to release {prev}"),
            },
            Err(e) => RollbackRecord {
                to_release: Some(prev.to_string()),
                from_release: new,
                success: false,
                details: format!(
                    "{name}: rollback to release {prev} FAILED, the service may be down: {e}"
                ),
            },
        };
        sink.event(&Event::Note(&record.details));
        record
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

/// Where a job is written as it changes. With one host, the host's run is
/// the job; with several, each host's run updates its entry in the job and
/// the job's phases sum them up.
struct JobBook {
    store: Store,
    parent: tokio::sync::Mutex<Job>,
    multi: bool,
}

impl JobBook {
    async fn update(&self, host: usize, host_job: &Job) -> Result<(), crate::store::StoreError> {
        let mut parent = self.parent.lock().await;
        if self.multi {
            parent.hosts[host].update_from(host_job);
            parent.phases = sum_phases(&parent.hosts, &parent.phases);
        } else {
            *parent = host_job.clone();
        }
        self.store.save_job(&parent).await
    }

    async fn edit(&self, f: impl FnOnce(&mut Job)) -> Job {
        let mut parent = self.parent.lock().await;
        f(&mut parent);
        if let Err(e) = self.store.save_job(&parent).await {
            eprintln!("warning: {e}");
        }
        parent.clone()
    }
}

/// The job's phases over several hosts: Validation as run once, the rest
/// summed up from the hosts (Register is the rollout's own).
fn sum_phases(hosts: &[HostReport], current: &[PhaseView]) -> Vec<PhaseView> {
    PhaseName::ALL
        .iter()
        .enumerate()
        .map(|(i, name)| match name {
            PhaseName::Validation | PhaseName::Register => current[i].clone(),
            _ => {
                let views: Vec<&PhaseView> = hosts
                    .iter()
                    .filter(|h| !matches!(h.status, JobStatus::Pending | JobStatus::Skipped))
                    .map(|h| &h.phases[i])
                    .collect();
                aggregate_phase(*name, &views)
            }
        })
        .collect()
}

/// Shows a host's events with the host's name, inside a rollout.
struct HostSink<'a> {
    inner: &'a dyn Sink,
    host: String,
}

impl Sink for HostSink<'_> {
    fn event(&self, e: &Event) {
        match e {
            Event::PhaseFinished(v) => self.inner.event(&Event::HostPhaseFinished(&self.host, v)),
            Event::Note(n) => self
                .inner
                .event(&Event::Note(&format!("[{}] {n}", self.host))),
            Event::PhaseStarted(_)
            | Event::HostPhaseFinished(..)
            | Event::JobFinished(_)
            | Event::TransferProgress { .. } => {}
        }
    }
}

async fn close_all(sites: &[Site]) {
    for s in sites {
        s.close().await;
    }
}

/// One job in progress on one host: its phases, its undo stack, and where
/// it reports.
struct JobRun<'a> {
    engine: &'a Engine,
    site: &'a Site,
    book: &'a JobBook,
    host_index: usize,
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

impl<'a> JobRun<'a> {
    // Everything a host's run is made of; grouping them would only rename them.
    #[allow(clippy::too_many_arguments)]
    fn new(
        engine: &'a Engine,
        site: &'a Site,
        book: &'a JobBook,
        host_index: usize,
        sink: &'a dyn Sink,
        work: Work,
        validation: &Phase,
        previous: Option<String>,
        job_id: String,
    ) -> Self {
        let mut phases = vec![validation.clone()];
        phases.extend(PhaseName::ALL[1..].iter().map(|n| Phase::pending(*n)));
        let job = engine.new_job(&work, job_id, validation, previous);
        JobRun {
            engine,
            site,
            book,
            host_index,
            store: book.store.clone(),
            sink,
            redactor: Redactor::new(work.secrets.iter().map(|(_, s)| s.clone())),
            phases,
            job,
            undo: Vec::new(),
            dirs: site.dirs(&work.service),
            work,
        }
    }

    async fn save(&mut self) {
        self.job.phases = self.phases.iter().map(Phase::view).collect();
        if let Err(e) = self.book.update(self.host_index, &self.job).await {
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
        if !self.book.multi
            && let Err(e) = self.store.audit(&entry).await
        {
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
        if !self.book.multi {
            let job = self.job.clone();
            self.sink.event(&Event::JobFinished(&job));
        }
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
                    self.engine
                        .config
                        .registry_token
                        .as_ref()
                        .map(|t| t.expose()),
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
        let id = self
            .work
            .release_id
            .clone()
            .unwrap_or_else(|| release::new_release_id(&hash, &self.dirs));
        let sink = self.sink;
        let progress = |sent: u64, total: u64| sink.event(&Event::TransferProgress { sent, total });
        let stats = self
            .site
            .host
            .put_release(src, &self.dirs, &id, previous, &progress)
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
        let details = if self.site.host.is_local() {
            format!(
                "{} files ({}) copied to {}",
                stats.files,
                crate::host::human_bytes(stats.bytes),
                self.dirs.release(&id).display()
            )
        } else {
            format!(
                "{} files ({}) to {} on {}: {} uploaded ({}), {} unchanged and hard-linked",
                stats.files,
                crate::host::human_bytes(stats.bytes),
                self.dirs.release(&id).display(),
                self.site.host.name(),
                stats.uploaded_files,
                crate::host::human_bytes(stats.uploaded_bytes),
                stats.linked_files
            )
        };
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
            .wait(probe(&self.engine.http, self.site, &ctx.spec), || {
                runtime.liveness(ctx)
            })
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
                            .wait(probe(&self.engine.http, self.site, &ctx.spec), || {
                                runtime.liveness(&ctx)
                            })
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

/// The failed Validation phase for a refused deploy.
fn validation_view(started: chrono::DateTime<Utc>, f: &Failure, redactor: &Redactor) -> PhaseView {
    finish_phase(
        Phase::pending(PhaseName::Validation),
        started,
        Err(f.message.clone()),
        redactor,
    )
    .view()
}

/// How a release's health is reached: over HTTP from here, or with curl on
/// the host when the spec says so.
fn probe<'a>(http: &'a reqwest::Client, site: &'a Site, spec: &RunSpec) -> Probe<'a> {
    if spec.health.from_target {
        Probe::OnHost(&site.host)
    } else {
        Probe::Http(http)
    }
}

fn health_check(spec: &RunSpec, host: &str) -> HealthCheck {
    // Checked on the host itself, the service is on its loopback.
    let host = if spec.health.from_target {
        "127.0.0.1"
    } else {
        host
    };
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
///
/// Read from the kernel's socket tables rather than probed with a bind: two
/// deployers validating at once would otherwise see each other's probe.
pub fn port_is_free(port: u16) -> bool {
    let mut read_any = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        read_any = true;
        if listening_ports(&text).any(|p| p == port) {
            return false;
        }
    }
    read_any || std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
}

/// Ports in state LISTEN (0A) in a /proc/net/tcp table.
fn listening_ports(table: &str) -> impl Iterator<Item = u16> + '_ {
    table.lines().skip(1).filter_map(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1)?;
        let state = fields.nth(1)?;
        if state != "0A" {
            return None;
        }
        u16::from_str_radix(local.rsplit(':').next()?, 16).ok()
    })
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// A job id like the spec's `deploy-abc12345`.
pub fn new_job_id() -> String {
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

#[cfg(test)]
mod port_tests {
    #[test]
    fn a_listening_socket_makes_its_port_busy() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(!super::port_is_free(port));
        drop(l);
        assert!(super::port_is_free(port));
    }
}
