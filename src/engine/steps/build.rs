//! Build: the manifest's build command in the release directory, then what
//! the runtime builds (an image, a venv). Undo: remove what the runtime
//! built (the command's output goes with the release's files).

use super::{Done, Step, StepCx, StepError, Undo};
use crate::hosting::runtime::ReleaseCtx;
use crate::model::*;
use crate::support::cmd::{Cmd, ExecError, Transport};
use crate::support::error::FailureKind;
use futures_util::future::BoxFuture;
use std::time::Duration;

/// How long the build command may run (the spec's 10 minutes).
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);

const ALREADY_BUILT: &str = "existing release: already built";

pub(in crate::engine) struct BuildCommand;

impl Step for BuildCommand {
    fn phase(&self) -> PhaseName {
        PhaseName::Build
    }

    fn name(&self) -> &'static str {
        "build command"
    }

    fn describe(&self, cx: &StepCx<'_>) -> String {
        format!(
            "in {}: sh -c {:?}",
            cx.new_release().dir().display(),
            cx.work.spec.build.as_deref().unwrap_or("")
        )
    }

    fn skip(&self, cx: &StepCx<'_>) -> Option<String> {
        if cx.existing() {
            Some(ALREADY_BUILT.into())
        } else if cx.work.spec.build.is_none() {
            Some("no build command".into())
        } else {
            None
        }
    }

    fn run<'a>(&'a self, cx: &'a mut StepCx<'_>) -> BoxFuture<'a, Result<Done, StepError>> {
        Box::pin(async move {
            let build = cx.work.spec.build.clone().unwrap_or_default();
            run_build_command(&*cx.site.host, &cx.new_release(), &build)
                .await
                .map_err(|e| StepError::new(FailureKind::Build, e))?;
            Ok(Done::shown(format!("ran `{build}`")))
        })
    }
}

/// Why the build command failed.
#[derive(Debug, thiserror::Error)]
enum BuildError {
    #[error(transparent)]
    Run(#[from] ExecError),
    #[error("build command `{command}` exited with code {code}:\n{output}")]
    Exited {
        command: String,
        code: String,
        output: String,
    },
}

/// Runs the manifest's build command in the release directory, with the
/// service's plain environment (never its secrets).
async fn run_build_command(
    transport: &impl Transport,
    ctx: &ReleaseCtx,
    build: &str,
) -> Result<(), BuildError> {
    let mut cmd = Cmd::new("/bin/sh").args(["-c", build]).cwd(ctx.dir());
    for (k, v) in ctx.base_env() {
        cmd = cmd.env(k, v);
    }
    let out = transport.exec(&cmd, BUILD_TIMEOUT).await?;
    if out.success() {
        return Ok(());
    }
    Err(BuildError::Exited {
        command: build.to_string(),
        code: out
            .code
            .map(|c| c.to_string())
            .unwrap_or_else(|| "signal".into()),
        output: out.tail(10),
    })
}

pub(in crate::engine) struct ImageBuild;

impl Step for ImageBuild {
    fn phase(&self) -> PhaseName {
        PhaseName::Build
    }

    fn name(&self) -> &'static str {
        "runtime build"
    }

    fn describe(&self, cx: &StepCx<'_>) -> String {
        let ctx = cx.new_release();
        cx.runtime(&ctx.spec).describe_build(&ctx)
    }

    fn skip(&self, cx: &StepCx<'_>) -> Option<String> {
        if cx.existing() {
            Some(ALREADY_BUILT.into())
        } else if !cx.runtime(&cx.work.spec).builds() {
            Some("the process method builds nothing more".into())
        } else {
            None
        }
    }

    fn run<'a>(&'a self, cx: &'a mut StepCx<'_>) -> BoxFuture<'a, Result<Done, StepError>> {
        Box::pin(async move {
            let ctx = cx.new_release();
            let details = cx
                .runtime(&ctx.spec)
                .build(&ctx)
                .await
                .map_err(|e| StepError::new(FailureKind::Build, e))?;
            Ok(Done::shown(details.unwrap_or_default()).with_undo(RemoveBuild { ctx }))
        })
    }
}

/// Removes what the runtime built for a release (its image).
struct RemoveBuild {
    ctx: ReleaseCtx,
}

impl Undo for RemoveBuild {
    fn describe(&self) -> String {
        format!("remove the build of {}", self.ctx.release)
    }

    fn undo<'a>(&'a self, cx: &'a StepCx<'_>, _: &'a mut RollbackRecord) -> BoxFuture<'a, ()> {
        Box::pin(async move { cx.runtime(&self.ctx.spec).remove_build(&self.ctx).await })
    }
}
