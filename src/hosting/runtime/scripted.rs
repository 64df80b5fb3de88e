//! A runtime for the engine's unit tests only (compiled under `cfg(test)`):
//! it runs nothing, records every call, and fails where its script says.
//! It stands in for process, docker and systemd so that the step list, its
//! undo order and the job's final state can be checked in milliseconds;
//! the real runtimes have their own end-to-end tests.

use super::{Fut, ReleaseCtx, RuntimeError};
use crate::hosting::health::Liveness;
use std::sync::{Arc, Mutex};

/// What to get wrong, for releases other than `good` (the one deployed
/// first): `build`, `start`, `exit` (dies before healthy), `sick` (answers
/// 500). `stop-good` fails stopping the good release, `start-good` fails
/// restarting it.
#[derive(Default)]
pub struct Script {
    pub fail: Vec<&'static str>,
    pub good: Option<String>,
    pub running: Option<String>,
    pub port: u16,
    pub calls: Vec<String>,
}

#[derive(Clone, Default)]
pub struct ScriptedRuntime {
    pub script: Arc<Mutex<Script>>,
}

impl ScriptedRuntime {
    fn fails(&self, what: &str, release: &str) -> bool {
        let s = self.script.lock().unwrap();
        let good = s.good.as_deref() == Some(release);
        let key = if good {
            format!("{what}-good")
        } else {
            what.to_string()
        };
        s.fail.iter().any(|f| *f == key)
    }

    fn call(&self, what: &str, ctx: &ReleaseCtx) {
        let mut s = self.script.lock().unwrap();
        s.calls.push(format!("{what} {}", ctx.release));
    }

    /// The HTTP status the running release answers its health check with;
    /// none when nothing runs or it died at start.
    pub fn health(&self) -> Option<&'static str> {
        let running = self.script.lock().unwrap().running.clone()?;
        if self.fails("exit", &running) {
            None
        } else if self.fails("sick", &running) {
            Some("500 Oops")
        } else {
            Some("200 OK")
        }
    }

    pub async fn build(&self, ctx: &ReleaseCtx) -> Result<String, RuntimeError> {
        self.call("build", ctx);
        if self.fails("build", &ctx.release) {
            return Err(RuntimeError::Release(format!(
                "building {} failed",
                ctx.release
            )));
        }
        Ok(format!("built {}", ctx.release))
    }

    pub async fn remove_build(&self, ctx: &ReleaseCtx) {
        self.call("remove build", ctx);
    }

    pub async fn start(&self, ctx: &ReleaseCtx) -> Result<String, RuntimeError> {
        self.call("start", ctx);
        if self.fails("start", &ctx.release) {
            return Err(RuntimeError::Release(format!(
                "{} would not start",
                ctx.release
            )));
        }
        self.script.lock().unwrap().running = Some(ctx.release.clone());
        Ok(format!("started {}", ctx.release))
    }

    pub async fn stop(&self, ctx: &ReleaseCtx) -> Result<(), RuntimeError> {
        self.call("stop", ctx);
        if self.fails("stop", &ctx.release) {
            return Err(RuntimeError::Release(format!(
                "{} would not stop",
                ctx.release
            )));
        }
        let mut s = self.script.lock().unwrap();
        if s.running.as_deref() == Some(ctx.release.as_str()) {
            s.running = None;
        }
        Ok(())
    }

    pub async fn liveness(&self, ctx: &ReleaseCtx) -> Liveness {
        if self.fails("exit", &ctx.release) {
            return Liveness::Exited {
                how: "exit code 1".into(),
                log_tail: "crashed at start".into(),
            };
        }
        Liveness::Alive
    }

    pub fn running(&self) -> Vec<(String, u16)> {
        let s = self.script.lock().unwrap();
        s.running.iter().map(|r| (r.clone(), s.port)).collect()
    }
}

impl super::Runtime for ScriptedRuntime {
    fn kind(&self) -> crate::model::RuntimeKind {
        crate::model::RuntimeKind::Docker
    }

    fn build<'a>(&'a self, ctx: &'a ReleaseCtx) -> Fut<'a, Result<Option<String>, RuntimeError>> {
        Box::pin(async move { ScriptedRuntime::build(self, ctx).await.map(Some) })
    }

    fn remove_build<'a>(&'a self, ctx: &'a ReleaseCtx) -> Fut<'a, ()> {
        Box::pin(ScriptedRuntime::remove_build(self, ctx))
    }

    fn start<'a>(&'a self, ctx: &'a ReleaseCtx) -> Fut<'a, Result<String, RuntimeError>> {
        Box::pin(ScriptedRuntime::start(self, ctx))
    }

    fn stop<'a>(&'a self, ctx: &'a ReleaseCtx) -> Fut<'a, Result<(), RuntimeError>> {
        Box::pin(ScriptedRuntime::stop(self, ctx))
    }

    fn stop_shell(&self, _: &ReleaseCtx) -> String {
        "true".into()
    }

    fn liveness<'a>(&'a self, ctx: &'a ReleaseCtx) -> Fut<'a, Liveness> {
        Box::pin(ScriptedRuntime::liveness(self, ctx))
    }

    fn owns<'a>(
        &'a self,
        _: &'a ReleaseCtx,
        _: &'a [super::ports::Listener],
    ) -> Fut<'a, Result<(), super::PortError>> {
        Box::pin(async { Ok(()) })
    }

    /// It answers from the test process, on a port of its own.
    fn publishes_itself(&self) -> bool {
        true
    }

    fn log_cmd(
        &self,
        _: &ReleaseCtx,
        _: usize,
        _: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Option<crate::support::cmd::Cmd> {
        None
    }

    fn running<'a>(
        &'a self,
        _: &'a crate::hosting::release::ServiceDirs,
        _: &'a str,
    ) -> Fut<'a, Vec<(String, u16)>> {
        Box::pin(async move { ScriptedRuntime::running(self) })
    }

    fn describe_build(&self, _: &ReleaseCtx) -> String {
        String::new()
    }

    fn describe_start(&self, _: &ReleaseCtx) -> String {
        String::new()
    }
}
