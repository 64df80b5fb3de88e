//! Backup before every deploy: the `[backup]` dumps and paths, saved on the
//! target before the migration runs and the old release stops. A backup
//! that fails (or fails to verify) fails the deploy before anything
//! stops (exit 16).

use super::{Done, Step, StepCx, StepError};
use crate::hosting::backup::BackupEnv;
use crate::model::*;
use crate::support::error::FailureKind;
use futures_util::future::BoxFuture;

pub(in crate::engine) struct Backup;

impl Step for Backup {
    fn phase(&self) -> PhaseName {
        PhaseName::StartService
    }

    fn name(&self) -> &'static str {
        "backup"
    }

    fn describe(&self, cx: &StepCx<'_>) -> String {
        let names: Vec<&str> = cx
            .work
            .spec
            .backup
            .iter()
            .flat_map(|b| b.commands.iter().map(|c| c.name.as_str()))
            .collect();
        format!(
            "back up {} into {}/backups",
            names.join(", "),
            cx.dirs.root.display()
        )
    }

    fn skip(&self, cx: &StepCx<'_>) -> Option<String> {
        if cx.work.spec.backup.is_none() {
            Some("no [backup] in service.toml".into())
        } else if cx.existing() {
            Some("a rollback takes no backup".into())
        } else {
            None
        }
    }

    fn run<'a>(&'a self, cx: &'a mut StepCx<'_>) -> BoxFuture<'a, Result<Done, StepError>> {
        Box::pin(async move {
            let Some(spec) = &cx.work.spec.backup else {
                return Ok(Done::quiet("nothing to back up"));
            };
            let ctx = cx.new_release();
            let env = BackupEnv {
                env: ctx.base_env(),
                secrets: ctx.secrets.clone(),
            };
            let taken = crate::hosting::backup::take(
                &cx.site.host,
                &cx.dirs,
                spec,
                cx.previous.as_deref(),
                &env,
            )
            .await
            .map_err(|e| StepError::new(FailureKind::Backup, e))?;
            cx.backup = Some(taken.id.clone());
            Ok(Done::shown(format!(
                "backup {} ({}) verified",
                taken.id,
                crate::hosting::host::human_bytes(taken.size)
            )))
        })
    }
}

/// Puts back the backup this job took (a failed migration with
/// `restore_on_failure`). What happened, as a line for the job.
pub(in crate::engine) async fn restore_taken(cx: &StepCx<'_>) -> Option<String> {
    let spec = cx
        .work
        .spec
        .backup
        .as_ref()
        .filter(|b| b.restore_on_failure)?;
    let id = cx.backup.as_deref()?;
    let ctx = cx.new_release();
    let env = BackupEnv {
        env: ctx.base_env(),
        secrets: ctx.secrets.clone(),
    };
    Some(
        match crate::hosting::backup::restore(&cx.site.host, &cx.dirs, spec, id, &env).await {
            Ok(()) => format!("backup {id} restored"),
            Err(e) => format!("restoring backup {id} FAILED: {e}"),
        },
    )
}
