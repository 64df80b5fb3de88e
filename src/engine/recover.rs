//! After a crash the service is up, and nothing of it runs that no record
//! names. A deployer that dies mid-job leaves the service down, or a
//! release running that never became current; a drain whose deployer died
//! may outlive its deadline. The next deployer command on the service
//! (under its lock) sweeps: it takes down what interrupted jobs brought up
//! and removes what they left (unit, environment file, image or venv,
//! files), stops every running release that is neither current nor still
//! within its drain, and brings `current` back up when a job was
//! interrupted. `serve` does the same at start and on a timer.

use super::{Engine, Event, Sink, steps};
use crate::hosting::release::ServiceDirs;
use crate::hosting::runtime::ReleaseCtx;
use crate::hosting::site::Site;
use crate::model::{Job, PhaseName, PhaseStatus, ReleaseStatus};
use crate::support::error::Failure;

/// What a sweep may do beyond stopping strays.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum BringUp {
    /// Start `current` when it is not running (a job was interrupted).
    Current,
    /// Leave `current` as it is (`deployer stop` is about to stop it).
    No,
}

impl Engine {
    /// Sweeps a service on one host. The caller holds the service's lock.
    /// Behind the proxy `current` comes back first (on its own port) and
    /// the proxy is pointed at it again, so the public port never goes to
    /// a release that is being taken down; without it, what holds the
    /// port goes first. False when something could not be done (the
    /// interrupted jobs stay to recover from, and the next command tries
    /// again).
    pub(super) async fn recover(
        &self,
        site: &Site,
        service: &str,
        jobs: &[Job],
        bring_up: BringUp,
        sink: &dyn Sink,
    ) -> bool {
        let dirs = site.dirs(service);
        let current = site.host.current(&dirs).await;
        let current_ctx = match &current {
            Some(c) => self.release_ctx(&dirs, service, c).await,
            None => None,
        };
        // Only a job that reached Start Service may have stopped `current`:
        // a service stopped on purpose stays stopped after a job that died
        // in Transfer or Build, or a queued job of a server that died.
        let bring_up = match current_ctx {
            Some(ctx) if bring_up == BringUp::Current && jobs.iter().any(reached_start) => {
                Some(ctx)
            }
            _ => None,
        };
        let mut ok = true;
        let proxied = bring_up.as_ref().filter(|c| c.spec.proxy.is_some());
        // A `current` that does not come back is said (audit) but does not
        // keep the jobs unrecovered: trying again on every command would
        // only wait out its health check each time.
        if let Some(ctx) = proxied {
            self.bring_up(site, ctx, sink).await;
            if let Err(e) = steps::proxy::point_at_current(site, ctx).await {
                let note = format!(
                    "recovery: pointing the proxy at release {}: {e}",
                    ctx.release
                );
                self.recovered(service, &note, sink).await;
                ok = false;
            }
        }
        ok &= self
            .take_down(site, service, jobs, current.as_deref(), sink)
            .await;
        ok &= self
            .stop_strays(site, service, current.as_deref(), sink)
            .await;
        site.remember_running(None);
        if let Some(ctx) = bring_up.as_ref().filter(|c| c.spec.proxy.is_none()) {
            self.bring_up(site, ctx, sink).await;
        }
        ok
    }

    /// Takes down and removes the releases the interrupted jobs made (by
    /// the releases' own records: a rollout sets its job's release only at
    /// the end, and a rollback's target was made by an earlier job and is
    /// only stopped, as a stray).
    async fn take_down(
        &self,
        site: &Site,
        service: &str,
        jobs: &[Job],
        current: Option<&str>,
        sink: &dyn Sink,
    ) -> bool {
        if jobs.is_empty() {
            return true;
        }
        let dirs = site.dirs(service);
        let releases = match self.store().await {
            Ok(store) => store.releases(service).await.unwrap_or_default(),
            Err(_) => return false,
        };
        let mut ok = true;
        for job in jobs {
            // Only what never became current or previous: a release the job
            // committed stays, whatever happened after.
            let made = releases.iter().filter(|r| {
                r.job_id == job.deploy_job_id
                    && Some(r.id.as_str()) != current
                    && matches!(r.status, ReleaseStatus::Pending | ReleaseStatus::Failed)
            });
            for release in made {
                let Some(ctx) = self.release_ctx(&dirs, service, &release.id).await else {
                    continue;
                };
                // Swarm rolls its own update back; its service is not a
                // release's to stop.
                let runtime = site.runtime(ctx.spec.runtime);
                if runtime.replaces_itself() {
                    continue;
                }
                let stopped = runtime.stop(&ctx).await;
                runtime.remove_build(&ctx).await;
                let removed = site.host.remove_release(&dirs, &release.id).await;
                ServiceDirs::new(&self.state_dir, service).remove_env_values(&release.id);
                let note = match (stopped, removed) {
                    (Ok(()), Ok(())) => format!(
                        "recovered: took down release {}, left by interrupted job {}",
                        release.id, job.deploy_job_id
                    ),
                    (Err(e), _) => {
                        ok = false;
                        format!("recovery: stopping release {} FAILED: {e}", release.id)
                    }
                    (_, Err(e)) => {
                        ok = false;
                        format!("recovery: removing release {} FAILED: {e}", release.id)
                    }
                };
                self.recovered(service, &note, sink).await;
            }
        }
        ok
    }

    /// Starts `current` again when it is not running, health-checked.
    async fn bring_up(&self, site: &Site, ctx: &ReleaseCtx, sink: &dyn Sink) -> bool {
        let running = site.running_releases(&ctx.dirs, &ctx.service).await;
        if running.iter().any(|(r, _)| *r == ctx.release) {
            return true;
        }
        let current = &ctx.release;
        let (ok, note) = match steps::restart_and_verify(site, &self.http, ctx).await {
            Ok(after) => (
                true,
                format!(
                    "recovered: restarted release {current} (healthy after {} ms)",
                    after.as_millis()
                ),
            ),
            Err(e) => (
                false,
                format!("recovery: restarting release {current} FAILED: {e}"),
            ),
        };
        self.recovered(&ctx.service, &note, sink).await;
        ok
    }

    /// Stops each running release that is not `current` and not within
    /// its drain: started by a job that died before switching to it, or
    /// drained by a deployer that died before the drain ended.
    async fn stop_strays(
        &self,
        site: &Site,
        service: &str,
        current: Option<&str>,
        sink: &dyn Sink,
    ) -> bool {
        let dirs = site.dirs(service);
        let running = site.running_releases(&dirs, service).await;
        if running.iter().all(|(r, _)| Some(r.as_str()) == current) {
            return true;
        }
        // Deadlines and the time, both by the host's clock; when the host
        // cannot say, nothing is stopped (it may be draining).
        let Some((now, drains)) = steps::proxy::drains(site, &dirs).await else {
            return false;
        };
        let mut ok = true;
        for (rel, _) in running {
            if Some(rel.as_str()) == current {
                continue;
            }
            let why = match drains.get(&rel) {
                Some(until) if *until > now => continue,
                Some(_) => "its drain is over",
                None => "it is not current and no job runs",
            };
            let Some(ctx) = self.release_ctx(&dirs, service, &rel).await else {
                continue;
            };
            // Swarm replaces its own tasks.
            if site.runtime(ctx.spec.runtime).replaces_itself() {
                continue;
            }
            let note = match site.runtime(ctx.spec.runtime).stop(&ctx).await {
                Ok(()) => {
                    steps::proxy::forget_drain(site, &dirs, &rel).await;
                    format!("recovered: stopped release {rel} ({why})")
                }
                Err(e) => {
                    ok = false;
                    format!("recovery: stopping release {rel} FAILED: {e}")
                }
            };
            self.recovered(service, &note, sink).await;
        }
        ok
    }

    /// Says what recovery did, to the front end and in the audit log.
    async fn recovered(&self, service: &str, note: &str, sink: &dyn Sink) {
        sink.event(&Event::Note(note));
        let entry = crate::model::AuditEntry {
            details: note.to_string(),
            duration_ms: None,
            ..super::records::audit_entry(
                &self.actor,
                "recover",
                service,
                None,
                "done",
                std::time::Instant::now(),
            )
        };
        if let Ok(store) = self.store().await {
            let _ = store.audit(&entry).await;
        }
    }

    /// A stored release as its runtime sees it: spec, environment values and
    /// secrets.
    pub(super) async fn release_ctx(
        &self,
        dirs: &ServiceDirs,
        service: &str,
        id: &str,
    ) -> Option<ReleaseCtx> {
        let release = self.release_record(service, id).await?;
        let secrets = self.secrets_for(&release.spec).unwrap_or_default();
        Some(ReleaseCtx {
            service: service.to_string(),
            release: id.to_string(),
            dirs: dirs.clone(),
            spec: release.spec,
            secrets,
        })
    }

    /// Marks the service's jobs whose deployer died interrupted, and
    /// sweeps the service on each of `sites` (the caller holds the lock).
    /// False when something could not be done: the next command tries
    /// again.
    pub(super) async fn sweep(
        &self,
        sites: &[Site],
        service: &str,
        bring_up: BringUp,
        sink: &dyn Sink,
    ) -> Result<bool, Failure> {
        // On servers, under their locks too: a deployer on another machine
        // may be running a job there whose release is not current yet.
        let host_locks = match sites.iter().any(|s| !s.host.is_local()) {
            false => None,
            true => match self.lock_hosts(sites, service, "recovery").await {
                Ok((locks, _)) => Some(locks),
                Err(f) if f.kind == crate::support::error::FailureKind::Locked => {
                    sink.event(&Event::Note(&format!("not recovered yet: {}", f.message)));
                    return Ok(false);
                }
                Err(f) => return Err(f),
            },
        };
        let result = self.sweep_locked(sites, service, bring_up, sink).await;
        if let Some(locks) = host_locks {
            locks.release().await;
        }
        result
    }

    async fn sweep_locked(
        &self,
        sites: &[Site],
        service: &str,
        bring_up: BringUp,
        sink: &dyn Sink,
    ) -> Result<bool, Failure> {
        let store = self.store().await?;
        store.mark_interrupted(service).await?;
        let interrupted = store.unrecovered(service).await?;
        let mut jobs = Vec::new();
        for id in &interrupted {
            jobs.extend(store.job(id).await?);
        }
        if !interrupted.is_empty() {
            let msg = format!(
                "earlier job {} was interrupted; marked failed, recovering",
                interrupted.join(", ")
            );
            sink.event(&Event::Note(&msg));
        }
        let mut ok = true;
        for site in sites {
            ok &= self.recover(site, service, &jobs, bring_up, sink).await;
        }
        if ok {
            store.set_recovered(&interrupted).await?;
            ServiceDirs::new(&self.state_dir, service).forget_drains();
        }
        Ok(ok)
    }

    /// What any command on a service does first: when a job of it was
    /// interrupted or a drain is overdue, and no other job holds its lock,
    /// sweep it on its hosts. Quiet when there is nothing to do.
    pub async fn recover_service(&self, service: &str, sink: &dyn Sink) -> Result<(), Failure> {
        if crate::input::plan::validate_name(service).is_err()
            || !self.state_dir.join("deployer.db").exists()
            || !self.needs_sweep(service).await?
        {
            return Ok(());
        }
        self.sweep_service(service, sink).await
    }

    /// Whether a crash left something to sweep: a job of the service whose
    /// deployer died (or that no sweep recovered from yet), or a drain past
    /// its end.
    pub(super) async fn needs_sweep(&self, service: &str) -> Result<bool, Failure> {
        Ok(self.store().await?.has_dead_jobs(service).await?
            || ServiceDirs::new(&self.state_dir, service).drain_overdue())
    }

    /// Sweeps a service on its hosts when no other job holds its lock (a
    /// live holder is running a job of it, and sweeps itself).
    pub async fn sweep_service(&self, service: &str, sink: &dyn Sink) -> Result<(), Failure> {
        // Connected first: the lock is not held while a host is slow to
        // answer.
        let sites = self.service_sites(service).await?;
        let result = match self.try_lock(service).await {
            Ok(_lock) => match self.sweep(&sites, service, BringUp::Current, sink).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(Failure::internal(format!(
                    "recovering '{service}' was not complete (see `deployer audit --service {service}`)"
                ))),
                Err(f) => Err(f),
            },
            Err(_) => Ok(()),
        };
        for site in &sites {
            site.close().await;
        }
        result
    }

    /// `serve`, at start and on its timer: `also`, and every service with
    /// a job whose deployer died or with an overdue drain, swept, except
    /// those in `resting`. Returns the services whose sweep failed (a host
    /// down): the caller waits a while before it tries them again.
    pub async fn recover_all(
        &self,
        also: &[String],
        resting: &[String],
        sink: &dyn Sink,
    ) -> Vec<String> {
        let mut services = also.to_vec();
        if let Ok(store) = self.store().await {
            services.extend(store.services_with_dead_jobs().await.unwrap_or_default());
        }
        services.extend(ServiceDirs::services_draining_overdue(&self.state_dir));
        services.sort();
        services.dedup();
        services.retain(|s| !resting.contains(s));
        let mut failed = Vec::new();
        for service in services {
            if let Err(f) = self.sweep_service(&service, sink).await {
                sink.event(&Event::Note(&format!(
                    "recovery of {service}: {}",
                    f.message
                )));
                failed.push(service);
            }
        }
        failed
    }
}

/// Whether a job got as far as Start Service (where `current` may stop).
fn reached_start(job: &Job) -> bool {
    job.phases.iter().any(|p| {
        p.name == PhaseName::StartService
            && !matches!(p.status(), PhaseStatus::Pending | PhaseStatus::Skipped)
    })
}
