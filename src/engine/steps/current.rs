//! The commit point, at the end of Verify Health: the healthy release
//! becomes `current` (an atomic rename), the one before is kept as
//! `previous`, and old releases beyond `keep_releases` are pruned. From
//! here a failure no longer rolls back.

use super::{Done, Step, StepCx, StepError};
use crate::model::*;
use crate::support::error::FailureKind;
use futures_util::future::BoxFuture;

pub(in crate::engine) struct SwitchCurrent;

impl Step for SwitchCurrent {
    fn phase(&self) -> PhaseName {
        PhaseName::VerifyHealth
    }

    fn name(&self) -> &'static str {
        "switch current"
    }

    fn describe(&self, cx: &StepCx<'_>) -> String {
        format!(
            "point {}/current at the new release",
            cx.dirs.root.display()
        )
    }

    fn run<'a>(&'a self, cx: &'a mut StepCx<'_>) -> BoxFuture<'a, Result<Done, StepError>> {
        Box::pin(async move {
            let release = cx.release.clone().unwrap_or_default();
            cx.site
                .host
                .switch_current(&cx.dirs, &release)
                .await
                .map_err(|e| {
                    StepError::new(
                        FailureKind::Internal,
                        format!("switching current to {release}: {e}"),
                    )
                })?;
            let service = &cx.work.service;
            let _ = cx
                .store
                .set_release_status(service, &release, ReleaseStatus::Current)
                .await;
            if let Some(prev) = cx.previous.as_deref().filter(|p| *p != release) {
                let _ = cx
                    .store
                    .set_release_status(service, prev, ReleaseStatus::Previous)
                    .await;
            }
            cx.service_url = Some(cx.work.service_url.clone());
            prune(cx, &release).await;
            Ok(Done {
                commit: true,
                ..Done::quiet(format!("release {release} is current"))
            })
        })
    }
}

/// Keeps the newest `keep_releases` good releases that are not older than
/// `keep_days`, plus current and the rollback target; removes the files
/// (and images) of the rest.
async fn prune(cx: &StepCx<'_>, current: &str) {
    let service = &cx.work.service;
    let Ok(releases) = cx.store.releases(service).await else {
        return;
    };
    let mut kept = 0usize;
    // Asked when the first release would go: a release still running (a
    // drain behind the proxy) keeps its files and its record until it
    // stops; a later prune takes it.
    let running = tokio::sync::OnceCell::new();
    let is_running = |id: String| {
        let running = &running;
        async move {
            // Of this job's method only: an old release of another one
            // would have been stopped by Start Service or the sweep.
            running
                .get_or_init(|| cx.runtime(&cx.work.spec).running(&cx.dirs, service))
                .await
                .iter()
                .any(|(r, _)| *r == id)
        }
    };
    let oldest = cx
        .work
        .keep_days
        .map(|d| chrono::Utc::now() - chrono::Duration::days(d.min(36_500) as i64));
    for r in releases {
        let keep_always = r.id == current || Some(r.id.as_str()) == cx.previous.as_deref();
        match r.status {
            ReleaseStatus::Current | ReleaseStatus::Previous => {
                kept += 1;
                let too_old = oldest.is_some_and(|t| r.created_at < t);
                if keep_always || (kept <= cx.work.keep_releases && !too_old) {
                    continue;
                }
            }
            ReleaseStatus::Failed if !keep_always => {
                // Failed releases never count; their files went at rollback.
                if !is_running(r.id.clone()).await
                    && cx.site.host.remove_release(&cx.dirs, &r.id).await.is_ok()
                {
                    // Not looked at again.
                    let _ = cx
                        .store
                        .set_release_status(service, &r.id, ReleaseStatus::Removed)
                        .await;
                }
                continue;
            }
            _ => continue,
        }
        if is_running(r.id.clone()).await {
            continue;
        }
        let ctx = cx.ctx(&r.id, &r.spec, &[]);
        // It runs nothing: its build and its files go at once.
        let (_, removed) = tokio::join!(
            cx.runtime(&r.spec).remove_build(&ctx),
            cx.site.host.remove_release(&cx.dirs, &r.id)
        );
        if removed.is_ok() {
            cx.local_dirs().remove_env_values(&r.id);
            let _ = cx
                .store
                .set_release_status(service, &r.id, ReleaseStatus::Removed)
                .await;
        }
    }
    if cx.work.spec.python.is_some() {
        // The venvs only removed releases linked go with them.
        let script = crate::hosting::python::prune_script(&cx.dirs.root);
        let cmd = crate::support::cmd::Cmd::new("sh").args(["-c", &script]);
        let _ = cx
            .site
            .host
            .run(&cmd, std::time::Duration::from_secs(120))
            .await;
    }
}
