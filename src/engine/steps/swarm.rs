//! The swarm method's part of a job: Start Service is a Swarm update (or
//! the service's creation), Verify Health follows it until every task of
//! the new image runs healthy or Swarm rolls it back. The undo brings the
//! release that was current back: Swarm's own rollback when it made one
//! (recorded as the job's rollback), an update to it otherwise; a service
//! the job created is removed.

use super::{Done, Step, StepCx, StepError, Undo};
use crate::hosting::runtime::swarm::{Progress, SwarmRuntime};
use crate::hosting::runtime::{ReleaseCtx, RuntimeError};
use crate::model::*;
use crate::support::error::FailureKind;
use futures_util::future::BoxFuture;

/// Start Service for a swarm release.
pub(super) async fn start(cx: &mut StepCx<'_>, ctx: ReleaseCtx) -> Result<Done, StepError> {
    let swarm = cx.site.swarm();
    let before = match cx.previous.clone() {
        Some(p) => Some(p),
        None => swarm.running_spec(&ctx.service).await.map(|s| s.release),
    };
    let previous = match before.filter(|p| *p != ctx.release && !p.is_empty()) {
        Some(p) => Some(cx.earlier_release(&p).await),
        None => None,
    };
    let back = SwarmBack {
        service: ctx.service.clone(),
        previous,
    };
    match swarm.start(&ctx).await {
        Ok(details) => Ok(Done::shown(details).with_undo(back)),
        Err(e) => Err(StepError {
            undo: Some(Box::new(back)),
            ..StepError::new(FailureKind::Start, e)
        }),
    }
}

/// Verify Health: the update converges.
pub(in crate::engine) struct Converge;

impl Step for Converge {
    fn phase(&self) -> PhaseName {
        PhaseName::VerifyHealth
    }

    fn name(&self) -> &'static str {
        "swarm update"
    }

    fn skip(&self, cx: &StepCx<'_>) -> Option<String> {
        let swarm = cx.runtime(&cx.work.spec).replaces_itself();
        (!swarm).then(|| "not a swarm service".into())
    }

    fn describe(&self, cx: &StepCx<'_>) -> String {
        let ctx = cx.new_release();
        format!(
            "follow the update until {} task(s) of release {} run healthy (at most {} s), or Swarm rolls it back",
            crate::hosting::runtime::swarm::spec(&ctx).replicas,
            ctx.release,
            SwarmRuntime::update_limit(&ctx).as_secs()
        )
    }

    fn run<'a>(&'a self, cx: &'a mut StepCx<'_>) -> BoxFuture<'a, Result<Done, StepError>> {
        Box::pin(async move {
            let cx: &StepCx<'_> = cx;
            let ctx = cx.new_release();
            let seen = |p: &Progress| cx.note(&format!("swarm: {}", p.summary()));
            match follow(cx, &ctx, &seen).await {
                Ok(p) => Ok(Done::shown(p.summary())),
                Err(e) => Err(StepError::new(FailureKind::Health, e)),
            }
        })
    }
}

async fn follow(
    cx: &StepCx<'_>,
    ctx: &ReleaseCtx,
    seen: &(dyn Fn(&Progress) + Sync),
) -> Result<Progress, RuntimeError> {
    let limit = SwarmRuntime::update_limit(ctx);
    cx.site.swarm().follow(ctx, limit, seen).await
}

/// Brings the release that was current back, or removes a new service.
struct SwarmBack {
    service: String,
    previous: Option<ReleaseCtx>,
}

impl Undo for SwarmBack {
    fn describe(&self) -> String {
        match &self.previous {
            Some(p) => format!("bring release {} back on the swarm", p.release),
            None => format!("remove swarm service {}", self.service),
        }
    }

    fn undo<'a>(&'a self, cx: &'a StepCx<'_>, record: &'a mut RollbackRecord) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let swarm = cx.site.swarm();
            let Some(prev) = &self.previous else {
                record.details = match swarm.remove(&self.service).await {
                    Ok(()) => format!(
                        "removed swarm service {} (nothing ran before)",
                        self.service
                    ),
                    Err(e) => {
                        record.success = false;
                        format!("removing swarm service {} FAILED: {e}", self.service)
                    }
                };
                cx.note(&record.details);
                return;
            };
            record.to_release = Some(prev.release.clone());
            let by_swarm = swarm
                .running_spec(&self.service)
                .await
                .is_some_and(|s| s.release == prev.release);
            let quiet = |_: &Progress| {};
            let result = if by_swarm {
                let limit = SwarmRuntime::update_limit(prev);
                swarm.follow_back(prev, limit).await
            } else {
                cx.note(&format!(
                    "rollback: updating the service back to release {}",
                    prev.release
                ));
                match swarm.start(prev).await {
                    Ok(_) => follow(cx, prev, &quiet).await,
                    Err(e) => Err(e),
                }
            };
            record.details = match result {
                Ok(p) if by_swarm => format!(
                    "Swarm rolled the service back to release {} ({})",
                    prev.release,
                    p.summary()
                ),
                Ok(p) => format!("rolled back to release {} ({})", prev.release, p.summary()),
                Err(e) => {
                    record.success = false;
                    format!(
                        "rollback to release {} FAILED, the service may be down: {}",
                        prev.release,
                        cx.redactor.redact(&e.to_string())
                    )
                }
            };
            cx.note(&record.details);
        })
    }
}
