//! The process runtime as one of the engine's runtimes.

use super::process::{ProcessRuntime, holds_port};
use super::{Fut, ReleaseCtx, RuntimeError};
use crate::hosting::health::Liveness;
use crate::hosting::release::ServiceDirs;

impl crate::hosting::runtime::Runtime for ProcessRuntime {
    fn kind(&self) -> crate::model::RuntimeKind {
        crate::model::RuntimeKind::Process
    }

    fn build<'a>(&'a self, _: &'a ReleaseCtx) -> Fut<'a, Result<Option<String>, RuntimeError>> {
        Box::pin(async { Ok(None) })
    }

    fn builds(&self) -> bool {
        false
    }

    fn remove_build<'a>(&'a self, _: &'a ReleaseCtx) -> Fut<'a, ()> {
        Box::pin(async {})
    }

    fn start<'a>(&'a self, ctx: &'a ReleaseCtx) -> Fut<'a, Result<String, RuntimeError>> {
        Box::pin(ProcessRuntime::start(self, ctx))
    }

    fn stop<'a>(&'a self, ctx: &'a ReleaseCtx) -> Fut<'a, Result<(), RuntimeError>> {
        Box::pin(ProcessRuntime::stop(self, ctx))
    }

    /// SIGTERM to the process group, SIGKILL after the grace.
    fn stop_shell(&self, ctx: &ReleaseCtx) -> String {
        format!(
            "pid=$(cut -d' ' -f1 {pidfile} 2>/dev/null); [ -n \"$pid\" ] || exit 0; \
             kill -TERM -\"$pid\" 2>/dev/null; i=0; \
             while kill -0 -\"$pid\" 2>/dev/null && [ $i -lt {ticks} ]; do sleep 0.1; i=$((i+1)); done; \
             kill -KILL -\"$pid\" 2>/dev/null; true",
            pidfile =
                crate::support::cmd::quote(&ctx.dirs.pid_file(&ctx.release).to_string_lossy()),
            ticks = ctx.spec.stop_grace_secs * 10,
        )
    }

    fn liveness<'a>(&'a self, ctx: &'a ReleaseCtx) -> Fut<'a, Liveness> {
        Box::pin(ProcessRuntime::liveness(self, ctx))
    }

    fn owns<'a>(
        &'a self,
        ctx: &'a ReleaseCtx,
        listeners: &'a [crate::hosting::runtime::ports::Listener],
    ) -> Fut<'a, Result<(), crate::hosting::runtime::PortError>> {
        Box::pin(async move {
            match self.serves(ctx, listeners) {
                true => Ok(()),
                false => Err(crate::hosting::runtime::not_ours(ctx, listeners)),
            }
        })
    }

    fn holds_port<'a>(&'a self, ctx: &'a ReleaseCtx) -> Fut<'a, bool> {
        let ctx = ctx.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || holds_port(&ctx))
                .await
                .unwrap_or(false)
        })
    }

    fn log_cmd(
        &self,
        _: &ReleaseCtx,
        _: usize,
        _: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Option<crate::support::cmd::Cmd> {
        None
    }

    fn running<'a>(&'a self, dirs: &'a ServiceDirs, _: &'a str) -> Fut<'a, Vec<(String, u16)>> {
        Box::pin(async move { ProcessRuntime::running(self, dirs) })
    }

    fn describe_build(&self, _: &ReleaseCtx) -> String {
        String::new()
    }

    fn describe_start(&self, ctx: &ReleaseCtx) -> String {
        format!(
            "in {}: sh -c {:?} (own session, log {})",
            ctx.dir().display(),
            format!("exec {}", ctx.spec.start.as_deref().unwrap_or("")),
            ctx.dirs.log_file(&ctx.release).display()
        )
    }
}
