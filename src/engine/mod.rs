//! The engine: runs a job as a list of steps grouped under the six phases,
//! reports each change to a [`Sink`], writes the job to the store as it
//! goes, and unwinds a stack of undos when a step fails. Both front ends
//! (the CLI and the HTTP API) call it and render its events; no deploy
//! logic lives anywhere else.
//!
//! A deploy and a rollback are the same list of steps: a deploy's release
//! comes from a directory (Transfer copies it, Build builds it), a
//! rollback's release already exists (those steps say so and are skipped).
//!
//! Where things are: this file is the public API (`deploy`, `submit`,
//! `rollback`, `stop`); `validate.rs` the Validation phase; `locks.rs` the
//! service lock and the hosts' locks; `run.rs` one host's run of the step
//! list with its undo stack; `steps/` the steps, one file each;
//! `rollout.rs` several hosts in waves; `records.rs` the job's records
//! (register, audit, finish — each written once); `recover.rs` bringing a
//! service back after a deployer died mid-job; `events.rs` what a job tells
//! its front end.

mod backups;
mod dry_run;
mod events;
mod finish;
mod host_run;
mod ids;
mod lifecycle;
mod locks;
mod monitor;
mod pause;
mod queue;
pub use queue::{JobQueue, Place, QueueFull};
mod records;
mod recover;
mod rollout;
mod run;
mod schedule;
pub use schedule::Daily;
mod stages;
mod steps;
mod validate;
mod work;
use work::{Source, Work};

pub use dry_run::PlannedStep;
pub use events::{Event, Quiet, Sink, StreamEvent};
pub use ids::{actor, new_job_id};
pub use lifecycle::{CheckLine, LogQuery};
pub use monitor::{HostLine, RegistryLine, ServiceLine, Snapshot};

use crate::hosting::site::{Site, TargetSpec};
use crate::input::config::DeployerConfig;
use crate::input::plan::{Plan, RegisterPlan};
use crate::model::*;
use crate::store::Store;
use crate::support::error::Failure;
use crate::support::secret::Secret;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The deploy engine.
pub struct Engine {
    config: DeployerConfig,
    state_dir: PathBuf,
    /// Opened on the first write, so a refused deploy creates nothing; or
    /// given by the caller (the server shares one store).
    store: tokio::sync::OnceCell<Store>,
    http: reqwest::Client,
    actor: String,
    lock_wait: Duration,
    /// Where deploys go: one target, or several for a rollout.
    targets: Vec<TargetSpec>,
    /// Jobs running at once (the server's workers): a job takes a place
    /// only once it holds its service's lock, so jobs queued behind one
    /// service never keep other services waiting.
    gate: Option<std::sync::Arc<tokio::sync::Semaphore>>,
    /// `targets` were named for this command (`--host`): day-2 commands
    /// act on them rather than on the hosts a service was deployed to.
    pinned: bool,
}

impl Engine {
    pub fn new(
        config: DeployerConfig,
        state_dir: PathBuf,
        lock_wait: Duration,
        targets: Vec<TargetSpec>,
    ) -> Self {
        // One client for the process: building one reads and parses the
        // system's CA certificates, a few milliseconds the server's `POST
        // /deploy` paid on every request.
        static HTTP: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
        let http = HTTP
            .get_or_init(|| {
                reqwest::Client::builder()
                    .no_proxy()
                    .connect_timeout(Duration::from_secs(5))
                    .build()
                    .expect("HTTP client")
            })
            .clone();
        Engine {
            config,
            state_dir,
            store: tokio::sync::OnceCell::new(),
            http,
            actor: actor(),
            lock_wait,
            targets,
            gate: None,
            pinned: false,
        }
    }

    /// Day-2 commands act on the engine's targets, not on the hosts a
    /// service's current release was deployed to.
    pub fn pinned(self) -> Self {
        Engine {
            pinned: true,
            ..self
        }
    }

    /// Jobs of this engine run only while they hold a place in `gate`.
    pub fn with_gate(self, gate: std::sync::Arc<tokio::sync::Semaphore>) -> Self {
        Engine {
            gate: Some(gate),
            ..self
        }
    }

    /// Waits for a place to run in (none needed without a gate).
    async fn enter_gate(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let gate = self.gate.clone()?;
        gate.acquire_owned().await.ok()
    }

    /// The engine writes to `store` instead of opening the state
    /// directory's database itself.
    pub fn with_store(self, store: Store) -> Self {
        Engine {
            store: tokio::sync::OnceCell::new_with(Some(store)),
            ..self
        }
    }

    /// Who the engine's jobs are recorded as run by.
    pub fn with_actor(self, actor: String) -> Self {
        Engine { actor, ..self }
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The store, opened (and created) on first use.
    async fn store(&self) -> Result<&Store, Failure> {
        Ok(self
            .store
            .get_or_try_init(|| Store::open(&self.state_dir))
            .await?)
    }

    /// The store of a state directory that has been used before; "not
    /// found" rather than created when it was not.
    async fn existing_store(&self) -> Result<&Store, Failure> {
        if self.store.get().is_none() && !self.state_dir.join("deployer.db").exists() {
            return Err(Failure::not_found(format!(
                "no deployer state in {} (nothing was deployed with this state directory)",
                self.state_dir.display()
            )));
        }
        self.store().await
    }

    /// Closes the store the engine opened (a CLI command ends here).
    pub async fn close(self) {
        if let Some(store) = self.store.get() {
            store.clone().close().await;
        }
    }

    /// Where rollback, stop, start, restart, check and logs act: the hosts
    /// the service's current release was deployed to (recorded by its last
    /// successful job), unless the command named its hosts.
    async fn service_targets(&self, service: &str) -> Result<Vec<TargetSpec>, Failure> {
        if !self.pinned {
            let hosts = self.existing_store().await?.service_hosts(service).await?;
            if !hosts.is_empty() {
                return crate::hosting::site::targets(&self.config, &hosts);
            }
        }
        Ok(if self.targets.is_empty() {
            vec![TargetSpec::Local]
        } else {
            self.targets.clone()
        })
    }

    /// The first of a service's hosts: where its backups are taken.
    async fn first_site(&self, service: &str) -> Result<Site, Failure> {
        let targets = self.service_targets(service).await?;
        Site::connect(&targets[0], &self.state_dir).await
    }

    /// Connects to each of a service's hosts ([`Engine::service_targets`]).
    async fn service_sites(&self, service: &str) -> Result<Vec<Site>, Failure> {
        let mut sites = Vec::new();
        for target in self.service_targets(service).await? {
            match Site::connect(&target, &self.state_dir).await {
                Ok(site) => sites.push(site),
                Err(f) => {
                    for site in &sites {
                        site.close().await;
                    }
                    return Err(f);
                }
            }
        }
        Ok(sites)
    }

    /// Deploys a plan. `Err` means the job never started (invalid input, the
    /// lock was busy) and nothing was written; a job that ran is returned
    /// whether it succeeded or not.
    pub async fn deploy(&self, plan: Plan, sink: &dyn Sink) -> Result<Job, Failure> {
        self.run_plan(plan, None, sink).await
    }

    /// Records a deploy as accepted (pending, every phase pending) before it
    /// runs: what the HTTP API answers 202 for. [`Engine::submit`] runs it.
    pub async fn accept(&self, plan: &Plan) -> Result<Job, Failure> {
        let job = self.pending_job(plan, new_job_id());
        self.store().await?.insert_job(&job).await?;
        Ok(job)
    }

    /// Runs a job [`Engine::accept`] recorded. A job refused before it runs
    /// (invalid on the target, unreachable, locked) is recorded as failed
    /// with its Validation phase, so its history reads like any other.
    pub async fn submit(&self, plan: Plan, accepted: &Job, sink: &dyn Sink) -> Job {
        let id = accepted.deploy_job_id.clone();
        let validation = events::Remember::new(sink);
        match self.run_plan(plan, Some(id.clone()), &validation).await {
            Ok(job) => job,
            Err(f) => {
                let mut job = accepted.clone();
                records::refused(&mut job, validation.validation(), &f);
                if let Ok(store) = self.store().await
                    && let Err(e) = store.save_job(&job).await
                {
                    sink.event(&Event::Note(&format!("warning: {e}")));
                }
                job
            }
        }
    }

    /// Rolls a service back to an earlier release (the one before current,
    /// or `to`). Runs as a job: Start Service, Verify Health and Register.
    pub async fn rollback(
        &self,
        service: &str,
        to: Option<&str>,
        sink: &dyn Sink,
    ) -> Result<Job, Failure> {
        // Read again under the lock; here it only refuses an unknown service.
        self.known_releases(service).await?;
        let sites = self.service_sites(service).await?;
        let job_id = new_job_id();
        let result = async {
            // Under the lock, so `current` cannot change while the target is chosen.
            let lock = self.lock(service, &job_id).await?;
            if self.needs_sweep(service).await? {
                self.sweep(&sites, service, recover::BringUp::Current, sink)
                    .await?;
            }
            let _place = self.enter_gate().await;
            let (work, validation) = self.rollback_work(&sites, service, to).await?;
            sink.event(&Event::PhaseFinished(&validation.view()));
            let ticket = run::Ticket {
                lock,
                job_id,
                accepted: false,
            };
            self.run(&sites, work, validation, ticket, sink).await
        }
        .await;
        for site in &sites {
            site.close().await;
        }
        result
    }

    /// Stops every running release of a service (it stays deployed:
    /// `current` is kept, and a later deploy or rollback starts it again).
    pub async fn stop(&self, service: &str) -> Result<Stopped, Failure> {
        let releases = self.known_releases(service).await?;
        let job_id = new_job_id();
        let _lock = self.lock(service, &job_id).await?;
        let sites = self.service_sites(service).await?;
        let started = std::time::Instant::now();
        if self.needs_sweep(service).await? {
            self.sweep(&sites, service, recover::BringUp::No, &Quiet)
                .await?;
        }
        let mut stopped = Vec::new();
        let mut failed = None;
        for site in &sites {
            match steps::stop_all(site, service, &releases).await {
                Ok(ids) => stopped.extend(ids.into_iter().map(|id| on_host(site, &sites, id))),
                Err(f) => failed = failed.or(Some(f)),
            }
            site.close().await;
        }
        if let Some(f) = failed {
            return Err(f);
        }
        let stopped = Stopped(stopped);
        let entry = AuditEntry {
            details: stopped.to_string(),
            ..records::audit_entry(&self.actor, "stop", service, None, "success", started)
        };
        self.store().await?.audit(&entry).await?;
        Ok(stopped)
    }

    /// A service's releases; not found when it has none.
    async fn known_releases(&self, service: &str) -> Result<Vec<Release>, Failure> {
        crate::input::plan::validate_name(service)?;
        let releases = self.existing_store().await?.releases(service).await?;
        if releases.is_empty() {
            return Err(Failure::not_found(format!(
                "no releases of service '{service}'"
            )));
        }
        Ok(releases)
    }

    /// A release as stored, with its environment values from this
    /// machine's state directory put back.
    async fn release_record(&self, service: &str, id: &str) -> Option<Release> {
        let store = self.store().await.ok()?;
        let mut release = store
            .releases(service)
            .await
            .ok()?
            .into_iter()
            .find(|r| r.id == id)?;
        self.restore_env_values(&mut release);
        Some(release)
    }

    /// Puts a stored release's environment values back; false when this
    /// machine does not have them.
    fn restore_env_values(&self, release: &mut Release) -> bool {
        if release.spec.env.is_empty() {
            return true;
        }
        let dirs =
            crate::hosting::release::ServiceDirs::new(&self.state_dir, &release.service_name);
        match dirs.env_values(&release.id) {
            Some(values) => {
                release.spec.env = values;
                true
            }
            None => false,
        }
    }

    /// The secrets a release's spec names, from deployer's environment and
    /// secrets file.
    fn secrets_for(&self, spec: &RunSpec) -> Result<Vec<(String, Secret)>, Failure> {
        crate::input::plan::resolve_secrets(&spec.secret_names, &self.config, &|k| {
            std::env::var(k).ok()
        })
    }

    /// What a rollback job runs, and its (already passed) Validation phase.
    async fn rollback_work(
        &self,
        sites: &[Site],
        service: &str,
        to: Option<&str>,
    ) -> Result<(Work, Phase), Failure> {
        let store = self.store().await?;
        let mut target = validate::rollback_target(sites, store, service, to).await?;
        if !self.restore_env_values(&mut target) {
            return Err(Failure::not_found(format!(
                "the environment values of release {} are not on this machine ({}); \
                 deploy it again instead",
                target.id,
                crate::hosting::release::ServiceDirs::new(&self.state_dir, service)
                    .env_values_file(&target.id)
                    .display()
            )));
        }
        let secrets = self.secrets_for(&target.spec)?;
        let target_job = store.job(&target.job_id).await?;
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
        let validation =
            validate::passed(format!("release {} exists; rolling back to it", target.id));
        let address = match &self.targets[..] {
            [TargetSpec::Ssh { ssh, .. }] => {
                crate::input::plan::address_for(&self.config, std::slice::from_ref(&ssh.host))
            }
            _ => crate::input::plan::service_address(&self.config),
        };
        let work = Work {
            kind: JobKind::Rollback,
            service: service.to_string(),
            service_path: target_job.map(|j| j.service_path).unwrap_or_default(),
            method: target.spec.runtime.as_str().to_string(),
            service_url: format!("http://{address}:{}", target.spec.public_port()),
            spec: target.spec.clone(),
            secrets,
            droplet_id,
            register,
            keep_releases: usize::MAX,
            keep_days: None,
            source: Source::Existing(target.id.clone()),
            rollout: Default::default(),
            release_id: Some(target.id.clone()),
            tests: Default::default(),
            smoke: Vec::new(),
            migrate: None,
            commit: target.commit.clone(),
            timeout: crate::input::plan::job_timeout(None, &self.config)?,
        };
        Ok((work, validation))
    }

    /// Validation, the locks, then the job: the one path every deploy takes.
    async fn run_plan(
        &self,
        mut plan: Plan,
        job_id: Option<String>,
        sink: &dyn Sink,
    ) -> Result<Job, Failure> {
        let sites = validate::connect_all(&self.targets, &self.state_dir, &plan, sink).await?;
        let accepted = job_id.is_some();
        let job_id = job_id.unwrap_or_else(new_job_id);
        let result = async {
            // A deploy that may wait (`--wait`, every job of the HTTP API)
            // takes the lock first and validates under it, when no other
            // deploy of the service runs: checked earlier, a running deploy
            // restarting the service could make its own port look taken. A
            // deploy that may not wait validates first, so a refusal writes
            // nothing at all.
            let early = if self.lock_wait.is_zero() {
                None
            } else {
                Some(self.lock(&plan.service_name, &job_id).await?)
            };
            // What a crash left (a release never switched to, a drain past
            // its end, `current` down) is swept before Validation looks at
            // what holds the port.
            if self.needs_sweep(&plan.service_name).await? {
                let sweep_lock = match early {
                    Some(_) => None,
                    None => Some(self.lock(&plan.service_name, &job_id).await?),
                };
                if let Some(dead) = sweep_lock.as_ref().and_then(|l| l.took_over.as_ref()) {
                    self.audit_took_over(&plan.service_name, &job_id, dead)
                        .await?;
                }
                self.sweep(&sites, &plan.service_name, recover::BringUp::Current, sink)
                    .await?;
            }
            let mut place = None;
            if early.is_some() {
                place = self.enter_gate().await;
            }
            let mut validation = validate::all(&sites, &mut plan, sink).await?;
            let lock = match early {
                Some(l) => l,
                None => self.lock(&plan.service_name, &job_id).await?,
            };
            if place.is_none() {
                place = self.enter_gate().await;
            }
            let _place = place;
            if let Err(f) = self.run_stages(&plan, &mut validation, sink).await {
                return self
                    .record_stopped(plan, job_id, accepted, &validation, &f, sink)
                    .await;
            }
            let work = Work::from_plan(plan);
            let ticket = run::Ticket {
                lock,
                job_id,
                accepted,
            };
            self.run(&sites, work, validation, ticket, sink).await
        }
        .await;
        for site in &sites {
            site.close().await;
        }
        result
    }
}

/// What happened on one host, named after the host when there are several.
fn on_host(site: &Site, all: &[Site], what: String) -> String {
    if all.len() > 1 {
        format!("{what} on {}", site.host.name())
    } else {
        what
    }
}

/// Failures a job's refusal is recorded with when it never ran.
impl From<&Failure> for JobState {
    fn from(f: &Failure) -> Self {
        JobState::failed(f.kind, f.message.clone())
    }
}
