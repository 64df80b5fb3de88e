//! A deploy to several hosts: Transfer and Build on every host at once,
//! then Start Service and Verify Health in waves, the canary wave first,
//! then the rest, `parallel` at a time (concurrently within a wave). Every
//! host runs the same step list with the same release id. A failed wave stops the
//! rollout: its failed hosts have unwound themselves, its switched hosts are
//! taken back here, later waves are skipped. Register runs once, at the end.

use super::events::HostSink;
use super::records::{self, JobBook};
use super::run::JobRun;
use super::steps;
use super::{Engine, Event, Sink, Source, Work};
use crate::error::FailureKind;
use crate::model::*;
use crate::plan::RegisterPlan;
use crate::release;
use crate::site::Site;
use chrono::Utc;
use std::time::Instant;

/// How a stopped rollout failed: the kind and the first failed host's error.
type RolloutFailure = (FailureKind, String);

impl Engine {
    pub(super) async fn rollout(
        &self,
        sites: &[Site],
        book: &JobBook<'_>,
        mut work: Work,
        validation: &Phase,
        previous: Vec<Option<String>>,
        sink: &dyn Sink,
    ) -> Job {
        let started = Instant::now();
        if let Source::Dir(src) = &work.source
            && let Ok(hash) = release::content_hash_off_thread(src).await
        {
            let dirs = sites[0].dirs(&work.service);
            work.release_id = Some(release::new_release_id(&hash, &dirs));
        }
        let register = std::mem::replace(
            &mut work.register,
            RegisterPlan::Skip {
                reason: "registered once for all hosts, after the last wave".into(),
            },
        );
        let ctx = WaveCtx {
            sites,
            book,
            work: &work,
            previous: &previous,
            sink,
        };
        let mut failure = self.prepare_and_waves(&ctx, validation).await;
        let register_phase = self
            .register_once(&work, register, book, &mut failure)
            .await;
        sink.event(&Event::PhaseFinished(&register_phase.view()));
        self.finish_rollout(book, &work, register_phase, failure, started)
            .await
    }

    /// Transfer and Build on every host at once, then the rest in waves;
    /// how the rollout failed, if it did.
    async fn prepare_and_waves(
        &self,
        ctx: &WaveCtx<'_>,
        validation: &Phase,
    ) -> Option<RolloutFailure> {
        let (sites, book, work, sink) = (ctx.sites, ctx.book, ctx.work, ctx.sink);
        let waves = work.rollout.waves(sites.len());
        let mut switched: Vec<usize> = Vec::new();
        let mut failure: Option<RolloutFailure> = None;
        let sinks: Vec<HostSink> = sites
            .iter()
            .map(|s| HostSink {
                inner: sink,
                host: s.host.name(),
            })
            .collect();
        let job_id = book.parent.lock().await.deploy_job_id.clone();
        let steps = steps::deploy_steps();
        let mut runs: Vec<JobRun> = (0..sites.len())
            .map(|i| {
                let mut run = JobRun::new(self, &sites[i], book, i, &sinks[i], work);
                run.start(validation, ctx.previous[i].clone(), &job_id);
                run
            })
            .collect();
        // Transfer and Build start nothing: every host at once. Only Start
        // Service and Verify Health go in waves, so the canary is still the
        // first host to run the new release.
        let note = format!("Transfer and Build on all {} hosts at once", sites.len());
        sink.event(&Event::Note(&note));
        let ready =
            futures_util::future::join_all(runs.iter_mut().map(|r| r.prepare(&steps))).await;
        if let Some(i) = ready.iter().position(|ok| !ok) {
            failure = Some(host_failure(&sites[i], &runs[i].job));
        }
        for (w, wave) in waves.iter().enumerate() {
            if failure.is_some() {
                for &i in wave.iter().filter(|&&i| ready[i]) {
                    runs[i].abandon("not run: the rollout stopped").await;
                }
                continue;
            }
            let what = if w == 0 && work.rollout.canary > 0 {
                "canary wave"
            } else {
                "wave"
            };
            let names: Vec<String> = wave.iter().map(|&i| sites[i].host.name()).collect();
            let note = format!("{what} {}: {}", w + 1, names.join(", "));
            sink.event(&Event::Note(&note));
            let in_wave = runs
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| wave.contains(i))
                .map(|(i, run)| {
                    let steps = &steps;
                    async move {
                        run.complete(steps).await;
                        (i, run.job.clone())
                    }
                });
            let results = futures_util::future::join_all(in_wave).await;
            match results.iter().find(|(_, j)| !j.succeeded()) {
                Some((i, j)) => {
                    failure = Some(host_failure(&sites[*i], j));
                    let mut back: Vec<usize> = results
                        .iter()
                        .filter(|(_, j)| j.succeeded())
                        .map(|(i, _)| *i)
                        .collect();
                    if work.rollout.rollback_switched {
                        back.extend(switched.iter().copied());
                    }
                    self.revert_hosts(ctx, &back).await;
                }
                None => switched.extend(wave.iter().copied()),
            }
        }
        failure
    }

    async fn revert_hosts(&self, ctx: &WaveCtx<'_>, hosts: &[usize]) {
        for &i in hosts {
            let record = self
                .revert(
                    &ctx.sites[i],
                    ctx.work,
                    ctx.previous[i].as_deref(),
                    ctx.sink,
                )
                .await;
            ctx.book.edit(|j| j.hosts[i].reverted = Some(record)).await;
        }
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
        let ctx = |release: &str, spec: &RunSpec| crate::runtime::ReleaseCtx {
            service: work.service.clone(),
            release: release.to_string(),
            dirs: dirs.clone(),
            spec: spec.clone(),
            secrets: work.secrets.clone(),
        };
        let note = format!("[{name}] rollback: stopping release {new}");
        sink.event(&Event::Note(&note));
        let _ = site
            .runtime(work.spec.runtime)
            .stop(&ctx(&new, &work.spec))
            .await;
        let mut record = RollbackRecord {
            to_release: previous.map(str::to_string),
            from_release: new,
            success: true,
            details: format!("{name}: stopped; it had no previous release"),
        };
        if let Some(prev) = previous {
            let spec = match self.release_record(&work.service, prev).await {
                Some(r) => r.spec,
                None => work.spec.clone(),
            };
            let outcome = match steps::restart_and_verify(site, &self.http, &ctx(prev, &spec)).await
            {
                Ok(_) => site
                    .host
                    .switch_current(&dirs, prev)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            record.success = outcome.is_ok();
            record.details = match outcome {
                Ok(()) => format!("{name}: rolled back to release {prev}"),
                Err(e) => format!(
                    "{name}: rollback to release {prev} FAILED, the service may be down: {e}"
                ),
            };
        }
        sink.event(&Event::Note(&record.details));
        record
    }

    /// Register, once every host runs the release.
    async fn register_once(
        &self,
        work: &Work,
        register: RegisterPlan,
        book: &JobBook<'_>,
        failure: &mut Option<RolloutFailure>,
    ) -> Phase {
        let state = match (&failure, register) {
            (Some(_), _) => PhaseState::Skipped {
                reason: "not run: the rollout failed".into(),
            },
            (None, RegisterPlan::Skip { reason }) => PhaseState::Skipped { reason },
            (
                None,
                RegisterPlan::To {
                    registry_url,
                    droplet_id,
                },
            ) => {
                let at = Utc::now();
                let result = records::register(self, work, &registry_url, droplet_id).await;
                let details = result
                    .as_ref()
                    .map(|_| format!("Registered as Droplet #{droplet_id}"))
                    .map_err(|e| e.to_string());
                match result {
                    Ok(r) => book.edit(|j| j.registration = Some(r)).await,
                    Err(e) => {
                        *failure = Some((FailureKind::Register, e.to_string()));
                        book.parent.lock().await.clone()
                    }
                };
                PhaseState::finished(at, details, "Register failed".into())
            }
        };
        Phase {
            state,
            ..Phase::pending(PhaseName::Register)
        }
    }

    async fn finish_rollout(
        &self,
        book: &JobBook<'_>,
        work: &Work,
        register_phase: Phase,
        failure: Option<RolloutFailure>,
        started: Instant,
    ) -> Job {
        let completed_at = Utc::now();
        let job = book
            .edit(|j| {
                j.phases[PhaseName::Register.index()] = register_phase;
                j.release = work.release_id.clone();
                j.service_url = failure.is_none().then(|| work.service_url.clone());
                j.state = match failure {
                    None => JobState::Completed { completed_at },
                    Some((kind, error)) => JobState::Failed {
                        kind,
                        error,
                        rollback: None,
                        completed_at,
                    },
                };
            })
            .await;
        let deployed = job.hosts.iter().filter(|h| h.deployed()).count();
        let details = format!(
            "release {} on {deployed} of {} hosts",
            job.release.as_deref().unwrap_or("?"),
            job.hosts.len()
        );
        let entry = AuditEntry {
            details,
            ..records::job_audit(&job, started)
        };
        if let Err(e) = book.store.audit(&entry).await {
            book.sink.event(&Event::Note(&format!("warning: {e}")));
        }
        let mut job = job;
        let redactor = crate::secret::Redactor::for_job(
            work.secrets.iter().map(|(_, s)| s),
            work.spec.env.values(),
        );
        records::announce(self, &mut job, &redactor, book.sink).await;
        let notifications = job.notifications.clone();
        let job = book.edit(|j| j.notifications = notifications).await;
        book.sink.event(&Event::JobFinished(&job));
        job
    }
}

/// What every host of a wave shares.
struct WaveCtx<'a> {
    sites: &'a [Site],
    book: &'a JobBook<'a>,
    work: &'a Work,
    previous: &'a [Option<String>],
    sink: &'a dyn Sink,
}

/// How a host's failure stops the rollout: its kind, and its error named
/// by the host.
fn host_failure(site: &Site, job: &Job) -> RolloutFailure {
    let kind = job.state.failure().unwrap_or(FailureKind::Internal);
    let error = job.state.error().unwrap_or_default();
    (kind, format!("{}: {error}", site.host.name()))
}
