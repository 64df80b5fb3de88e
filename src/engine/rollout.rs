//! Where the host steps run: the schedule. Transfer and Build on every
//! host at once, then Start Service and Verify Health in waves, the canary
//! wave first, then the rest, `parallel` at a time (concurrently within a
//! wave). One host is the same schedule with one wave of one host. Every
//! host runs the same steps with the same release id. A failed wave stops
//! the rollout: its failed hosts have unwound themselves, its switched
//! hosts are taken back here, later waves are skipped. The job steps
//! (Register, notifications) run once afterwards (`finish.rs`).

use super::events::HostSink;
use super::host_run::JobRun;
use super::records::JobBook;
use super::steps::Step;
use super::{Engine, Event, Sink, Source, Work};
use crate::hosting::release;
use crate::hosting::site::Site;
use crate::model::*;
use crate::support::error::FailureKind;

/// How the hosts' part of a job failed: the kind, the error (named by the
/// host when there are several) and, with one host, its rollback.
pub(super) struct HostsFailed {
    pub kind: FailureKind,
    pub error: String,
    pub rollback: Option<RollbackRecord>,
}

/// The hosts of one job and what they share.
pub(super) struct Hosts<'a> {
    pub sites: &'a [Site],
    pub book: &'a JobBook<'a>,
    pub validation: &'a Phase,
    pub previous: Vec<Option<String>>,
    pub sink: &'a dyn Sink,
}

impl Engine {
    /// Runs the host steps on every host, on the schedule above.
    pub(super) async fn run_hosts(
        &self,
        hosts: &Hosts<'_>,
        work: &mut Work,
        steps: &[Box<dyn Step>],
    ) -> Result<(), HostsFailed> {
        let sites = hosts.sites;
        if sites.len() > 1
            && let Source::Dir(src) = &work.source
            && let Ok(hash) = release::content_hash_off_thread(src).await
        {
            let dirs = sites[0].dirs(&work.service);
            work.release_id = Some(release::new_release_id(&hash, &dirs));
        }
        let sinks: Vec<HostSink> = sites
            .iter()
            .map(|s| HostSink {
                inner: hosts.sink,
                host: s.host.name(),
            })
            .collect();
        let job_id = hosts.book.parent.lock().await.deploy_job_id.clone();
        let work: &Work = work;
        let mut runs: Vec<JobRun> = (0..sites.len())
            .map(|i| {
                let sink: &dyn Sink = match sites.len() {
                    1 => hosts.sink,
                    _ => &sinks[i],
                };
                let mut run = JobRun::new(self, &sites[i], hosts.book, i, sink, work);
                run.start(hosts.validation, hosts.previous[i].clone(), &job_id);
                run
            })
            .collect();
        self.prepare_and_waves(hosts, work, &mut runs, steps).await
    }

    /// Transfer and Build on every host at once, then the rest in waves;
    /// how the hosts failed, if they did.
    async fn prepare_and_waves(
        &self,
        hosts: &Hosts<'_>,
        work: &Work,
        runs: &mut [JobRun<'_>],
        steps: &[Box<dyn Step>],
    ) -> Result<(), HostsFailed> {
        let (sites, sink) = (hosts.sites, hosts.sink);
        let many = sites.len() > 1;
        let waves = work.rollout.waves(sites.len());
        let mut switched: Vec<usize> = Vec::new();
        let mut failure: Option<HostsFailed> = None;
        // Transfer and Build start nothing: every host at once. Only Start
        // Service and Verify Health go in waves, so the canary is still the
        // first host to run the new release.
        if many {
            let note = format!("Transfer and Build on all {} hosts at once", sites.len());
            sink.event(&Event::Note(&note));
        }
        let ready = futures_util::future::join_all(runs.iter_mut().map(|r| r.prepare(steps))).await;
        if let Some(i) = ready.iter().position(|ok| !ok) {
            failure = Some(host_failure(sites, i, &runs[i].job));
        }
        for (w, wave) in waves.iter().enumerate() {
            if failure.is_some() {
                for &i in wave.iter().filter(|&&i| ready[i]) {
                    runs[i].abandon("not run: the rollout stopped").await;
                }
                continue;
            }
            if many {
                let what = match w == 0 && work.rollout.canary > 0 {
                    true => "canary wave",
                    false => "wave",
                };
                let names: Vec<String> = wave.iter().map(|&i| sites[i].host.name()).collect();
                let note = format!("{what} {}: {}", w + 1, names.join(", "));
                sink.event(&Event::Note(&note));
            }
            let in_wave = runs
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| wave.contains(i))
                .map(|(i, run)| async move {
                    run.complete(steps).await;
                    (i, run.job.clone())
                });
            let results = futures_util::future::join_all(in_wave).await;
            match results.iter().find(|(_, j)| !j.succeeded()) {
                Some((i, j)) => {
                    failure = Some(host_failure(sites, *i, j));
                    let mut back: Vec<usize> = results
                        .iter()
                        .filter(|(_, j)| j.succeeded())
                        .map(|(i, _)| *i)
                        .collect();
                    if work.rollout.rollback_switched {
                        back.extend(switched.iter().copied());
                    }
                    self.revert_hosts(hosts, work, &back).await;
                }
                None => switched.extend(wave.iter().copied()),
            }
        }
        failure.map_or(Ok(()), Err)
    }

    async fn revert_hosts(&self, hosts: &Hosts<'_>, work: &Work, which: &[usize]) {
        for &i in which {
            let (site, previous) = (&hosts.sites[i], hosts.previous[i].as_deref());
            let record = self.revert(site, work, previous, hosts.sink).await;
            hosts
                .book
                .edit(|j| j.hosts[i].reverted = Some(record))
                .await;
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
        let ctx = |release: &str, spec: &RunSpec| crate::hosting::runtime::ReleaseCtx {
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
            let outcome =
                match super::steps::restart_and_verify(site, &self.http, &ctx(prev, &spec)).await {
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
}

/// How a host's failure stops the job: its kind, its error (named by the
/// host when there are several) and, with one host, its rollback.
fn host_failure(sites: &[Site], i: usize, job: &Job) -> HostsFailed {
    let kind = job.state.failure().unwrap_or(FailureKind::Internal);
    let error = job.state.error().unwrap_or_default();
    match sites.len() {
        1 => HostsFailed {
            kind,
            error: error.to_string(),
            rollback: job.state.rollback().cloned(),
        },
        _ => HostsFailed {
            kind,
            error: format!("{}: {error}", sites[i].host.name()),
            rollback: None,
        },
    }
}
