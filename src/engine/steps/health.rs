//! Verify Health: poll the new release until it is healthy, it exits, or
//! the rule gives up. Also how a restarted release is checked, written
//! once for the undo that restarts the previous release and for a
//! rollout's revert.

use super::{Done, Step, StepCx, StepError};
use crate::hosting::health::{HealthCheck, Probe, Unhealthy};
use crate::hosting::runtime::{ReleaseCtx, RuntimeError};
use crate::hosting::site::Site;
use crate::model::*;
use crate::support::error::FailureKind;
use futures_util::future::BoxFuture;
use std::time::Duration;

pub(in crate::engine) struct VerifyHealth;

impl Step for VerifyHealth {
    fn phase(&self) -> PhaseName {
        PhaseName::VerifyHealth
    }

    fn name(&self) -> &'static str {
        "health check"
    }

    fn describe(&self, cx: &StepCx<'_>) -> String {
        let spec = &cx.work.spec;
        format!(
            "GET {} until 2xx, for at most {} s",
            health_check(spec, &cx.site.health_host()).url,
            spec.health.timeout_secs
        )
    }

    fn run<'a>(&'a self, cx: &'a mut StepCx<'_>) -> BoxFuture<'a, Result<Done, StepError>> {
        Box::pin(async move {
            let ctx = cx.new_release();
            let runtime = cx.runtime(&ctx.spec);
            let check = health_check(&ctx.spec, &cx.site.health_host());
            let result = check
                .wait(probe(&cx.engine.http, cx.site, &ctx.spec), || {
                    runtime.liveness(&ctx)
                })
                .await;
            match result {
                Ok(h) => {
                    answered_by(cx.site, &ctx)
                        .await
                        .map_err(|e| StepError::new(FailureKind::Health, e))?;
                    Ok(Done::shown(format!(
                        "Service is healthy: {} answered 2xx after {} ms ({} checks), \
                         from release {}",
                        check.url,
                        h.after.as_millis(),
                        h.checks,
                        ctx.release
                    )))
                }
                // A service that dies at once failed to start, whatever phase saw it.
                Err(Unhealthy::Exited(e)) => Err(StepError::new(FailureKind::Start, e)),
                Err(Unhealthy::Failed(e)) => Err(StepError::new(FailureKind::Health, e)),
            }
        })
    }
}

/// Why a restarted release is not back.
#[derive(Debug, thiserror::Error)]
pub(in crate::engine) enum RestartError {
    #[error(transparent)]
    Start(#[from] RuntimeError),
    #[error(transparent)]
    Unhealthy(#[from] Unhealthy),
    #[error(transparent)]
    NotOurs(#[from] crate::hosting::runtime::PortError),
}

/// One quick look at a running release's health (`deployer check`): up to
/// `budget` for a 2xx; how long it took.
pub(in crate::engine) async fn look(
    site: &Site,
    http: &reqwest::Client,
    ctx: &ReleaseCtx,
    budget: Duration,
) -> Result<Duration, Unhealthy> {
    let runtime = site.runtime(ctx.spec.runtime);
    let check = HealthCheck {
        timeout: budget,
        ..health_check(&ctx.spec, &site.health_host())
    };
    check
        .wait(probe(http, site, &ctx.spec), || runtime.liveness(ctx))
        .await
        .map(|h| h.after)
}

/// Starts a release again and waits until it is healthy; how long that took.
pub(in crate::engine) async fn restart_and_verify(
    site: &Site,
    http: &reqwest::Client,
    ctx: &ReleaseCtx,
) -> Result<Duration, RestartError> {
    let runtime = site.runtime(ctx.spec.runtime);
    runtime.start(ctx).await?;
    runtime.settle(ctx).await?;
    let healthy = health_check(&ctx.spec, &site.health_host())
        .wait(probe(http, site, &ctx.spec), || runtime.liveness(ctx))
        .await?;
    answered_by(site, ctx).await?;
    Ok(healthy.after)
}

/// That the release itself holds its port (what answered the health
/// check is not a process an earlier, killed deployer left behind).
async fn answered_by(
    site: &Site,
    ctx: &ReleaseCtx,
) -> Result<(), crate::hosting::runtime::PortError> {
    let runtime = site.runtime(ctx.spec.runtime);
    if runtime.holds_port(ctx).await {
        return Ok(());
    }
    let listeners = site.listeners(ctx.spec.port).await;
    runtime.serves(ctx, &listeners).await
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
