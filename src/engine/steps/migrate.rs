//! Migrations: the manifest's `migrate` runs against the new release after
//! the backup and before the old release is stopped, with the service's
//! environment and secrets (it needs the database's). In the release
//! directory on the target; for docker, in a one-off container of the new
//! image. A failure leaves the old release running (exit 15).

use super::{Done, Step, StepCx, StepError};
use crate::model::*;
use crate::support::cmd::Cmd;
use crate::support::error::FailureKind;
use futures_util::future::BoxFuture;
use std::time::Duration;

/// How long a migration may run.
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(1800);

pub(in crate::engine) struct Migrate;

impl Step for Migrate {
    fn phase(&self) -> PhaseName {
        PhaseName::StartService
    }

    fn name(&self) -> &'static str {
        "migrate"
    }

    fn describe(&self, cx: &StepCx<'_>) -> String {
        format!(
            "sh -c {:?} against the new release",
            cx.work.migrate.as_deref().unwrap_or("")
        )
    }

    fn skip(&self, cx: &StepCx<'_>) -> Option<String> {
        if cx.work.migrate.is_none() {
            Some("no migration (migrate in service.toml)".into())
        } else if cx.existing() {
            Some("existing release: its migration ran when it was deployed".into())
        } else {
            None
        }
    }

    fn run<'a>(&'a self, cx: &'a mut StepCx<'_>) -> BoxFuture<'a, Result<Done, StepError>> {
        Box::pin(async move {
            let Some(command) = &cx.work.migrate else {
                return Ok(Done::quiet("no migration"));
            };
            let ctx = cx.new_release();
            // A swarm release's image is on the manager too, as NAME:RELEASE.
            let cmd = if !ctx.spec.runtime.on_host() {
                crate::hosting::runtime::docker::one_off_cmd(&ctx, command)
            } else {
                let mut cmd = Cmd::new("/bin/sh").args(["-c", command]).cwd(ctx.dir());
                for (k, v) in ctx.base_env() {
                    cmd = cmd.env(k, v);
                }
                for (k, v) in &ctx.secrets {
                    cmd = cmd.secret_env(k.clone(), v.clone());
                }
                cmd
            };
            let failed = |e: String| StepError::new(FailureKind::Migrate, e);
            let out = cx
                .site
                .host
                .run(&cmd, MIGRATE_TIMEOUT)
                .await
                .map_err(|e| failed(e.to_string()))?;
            let tail = out.tail(20);
            if !out.success() {
                let code = out
                    .code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "signal".into());
                let restored = super::backup::restore_taken(cx)
                    .await
                    .map(|r| format!("; {r}"))
                    .unwrap_or_default();
                return Err(failed(format!(
                    "migration `{command}` exited with code {code}; the old release kept running{restored}:\n{tail}"
                )));
            }
            Ok(Done {
                output: Some(tail),
                ..Done::shown(format!("migrated (`{command}`)"))
            })
        })
    }
}
