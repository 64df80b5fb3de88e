//! Start Service: stop what of the service runs, then start the new
//! release. Undos: restart the release that was current (and check it is
//! healthy), and stop the new one.

use super::{Done, Step, StepCx, StepError, Undo};
use crate::hosting::runtime::ReleaseCtx;
use crate::hosting::site::Site;
use crate::model::*;
use crate::support::error::{Failure, FailureKind};
use futures_util::future::BoxFuture;

pub(in crate::engine) struct StopOld;

impl Step for StopOld {
    fn phase(&self) -> PhaseName {
        PhaseName::StartService
    }

    fn name(&self) -> &'static str {
        "stop old"
    }

    fn skip(&self, cx: &StepCx<'_>) -> Option<String> {
        if cx.runtime(&cx.work.spec).replaces_itself() {
            return Some("swarm: the update replaces old tasks once new ones are healthy".into());
        }
        cx.work
            .spec
            .proxy
            .is_some()
            .then(|| "behind the proxy: the old release serves until the switch".into())
    }

    fn describe(&self, cx: &StepCx<'_>) -> String {
        match &cx.previous {
            Some(p) => format!("stop release {p} (and whatever else of the service runs)"),
            None => "stop whatever of the service runs".into(),
        }
    }

    fn run<'a>(&'a self, cx: &'a mut StepCx<'_>) -> BoxFuture<'a, Result<Done, StepError>> {
        Box::pin(async move {
            let new = cx.release.clone().unwrap_or_default();
            let running = cx
                .site
                .running_before_start(&cx.dirs, &cx.work.service)
                .await;
            let mut stopped = Vec::new();
            for (rel, _) in running.iter().filter(|(r, _)| *r != new) {
                let ctx = cx.earlier_release(rel).await;
                cx.note(&format!("stopping release {rel}"));
                cx.runtime(&ctx.spec)
                    .stop_for_new(&ctx)
                    .await
                    .map_err(|e| {
                        StepError::new(
                            FailureKind::Start,
                            format!("stopping the running release {rel}: {e}"),
                        )
                    })?;
                stopped.push(rel.clone());
            }
            let done = Done::quiet(Stopped(stopped).to_string());
            // The release to bring back on failure: `current`, whether or
            // not it was running (a crashed current release is restarted too).
            match cx.previous.clone().filter(|p| *p != new) {
                Some(prev) => {
                    let ctx = cx.earlier_release(&prev).await;
                    Ok(done.with_undo(RestartPrevious { ctx }))
                }
                None => Ok(done),
            }
        })
    }
}

pub(in crate::engine) struct StartNew;

impl Step for StartNew {
    fn phase(&self) -> PhaseName {
        PhaseName::StartService
    }

    fn name(&self) -> &'static str {
        "start new"
    }

    fn describe(&self, cx: &StepCx<'_>) -> String {
        let ctx = cx.new_release();
        cx.runtime(&ctx.spec).describe_start(&ctx)
    }

    fn run<'a>(&'a self, cx: &'a mut StepCx<'_>) -> BoxFuture<'a, Result<Done, StepError>> {
        Box::pin(async move {
            let ctx = cx.new_release();
            if ctx.spec.proxy.is_some()
                && cx
                    .site
                    .running_releases(&cx.dirs, &cx.work.service)
                    .await
                    .iter()
                    .any(|(r, _)| *r == ctx.release)
            {
                // A rollback to a release still draining: it serves again.
                return Ok(Done::shown(format!(
                    "release {} still runs on port {}",
                    ctx.release, ctx.spec.port
                )));
            }
            if cx.runtime(&ctx.spec).replaces_itself() {
                return super::swarm::start(cx, ctx).await;
            }
            // What was running of the service has stopped: anything still
            // on the port is not deployer's to stop, and the new release
            // could not bind it.
            let listeners = cx.site.listeners(ctx.spec.port).await;
            cx.runtime(&ctx.spec)
                .port_free(&ctx, &listeners)
                .map_err(|e| StepError::new(FailureKind::Invalid, e))?;
            match cx.runtime(&ctx.spec).start(&ctx).await {
                Ok(details) => Ok(Done::shown(details).with_undo(StopNew { ctx })),
                // A half-started container or process is cleaned up too.
                Err(e) => Err(StepError {
                    undo: Some(Box::new(StopNew { ctx })),
                    ..StepError::new(FailureKind::Start, e)
                }),
            }
        })
    }
}

/// Stops the release this job started.
struct StopNew {
    ctx: ReleaseCtx,
}

impl Undo for StopNew {
    fn describe(&self) -> String {
        format!("stop release {}", self.ctx.release)
    }

    fn undo<'a>(&'a self, cx: &'a StepCx<'_>, _: &'a mut RollbackRecord) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            cx.note(&format!("rollback: stopping release {}", self.ctx.release));
            if let Err(e) = cx.runtime(&self.ctx.spec).stop(&self.ctx).await {
                cx.note(&format!("rollback: {e}"));
            }
        })
    }
}

/// Restarts the release that was current, unless it still runs, and
/// checks it is healthy.
struct RestartPrevious {
    ctx: ReleaseCtx,
}

impl Undo for RestartPrevious {
    fn describe(&self) -> String {
        format!("restart release {}", self.ctx.release)
    }

    fn undo<'a>(&'a self, cx: &'a StepCx<'_>, record: &'a mut RollbackRecord) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let ctx = &self.ctx;
            record.to_release = Some(ctx.release.clone());
            let alive = cx
                .site
                .running_releases(&cx.dirs, &cx.work.service)
                .await
                .iter()
                .any(|(r, _)| *r == ctx.release);
            if alive {
                record.details = format!("release {} kept running", ctx.release);
                return;
            }
            cx.note(&format!("rollback: restarting release {}", ctx.release));
            match super::restart_and_verify(cx.site, &cx.engine.http, ctx).await {
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
                        cx.redactor.redact(&e.to_string())
                    );
                }
            }
            cx.note(&record.details);
        })
    }
}

/// Stops every running release of a service that the store knows (the
/// `deployer stop` command). Returns the releases stopped.
pub(in crate::engine) async fn stop_all(
    site: &Site,
    service: &str,
    releases: &[Release],
) -> Result<Vec<String>, Failure> {
    let dirs = site.dirs(service);
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
    Ok(stopped)
}
