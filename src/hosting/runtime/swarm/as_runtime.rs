//! The swarm as one of the engine's runtimes.

use super::*;
use crate::hosting::runtime::Fut;

impl crate::hosting::runtime::Runtime for SwarmRuntime {
    fn kind(&self) -> crate::model::RuntimeKind {
        crate::model::RuntimeKind::Swarm
    }

    fn build<'a>(&'a self, ctx: &'a ReleaseCtx) -> Fut<'a, Result<Option<String>, RuntimeError>> {
        Box::pin(async move { SwarmRuntime::build(self, ctx).await.map(Some) })
    }

    fn remove_build<'a>(&'a self, ctx: &'a ReleaseCtx) -> Fut<'a, ()> {
        Box::pin(SwarmRuntime::remove_build(self, ctx))
    }

    fn start<'a>(&'a self, ctx: &'a ReleaseCtx) -> Fut<'a, Result<String, RuntimeError>> {
        Box::pin(SwarmRuntime::start(self, ctx))
    }

    /// Every task, not just the first one the proxy finds.
    fn settle<'a>(&'a self, ctx: &'a ReleaseCtx) -> Fut<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            self.follow(ctx, Self::update_limit(ctx), &|_| {})
                .await
                .map(|_| ())
        })
    }

    fn stop<'a>(&'a self, ctx: &'a ReleaseCtx) -> Fut<'a, Result<(), RuntimeError>> {
        Box::pin(SwarmRuntime::stop(self, ctx))
    }

    /// Swarm replaces tasks itself; nothing drains behind a proxy.
    fn stop_shell(&self, _: &ReleaseCtx) -> String {
        "true".into()
    }

    fn replaces_itself(&self) -> bool {
        true
    }

    fn restart_in_place<'a>(
        &'a self,
        ctx: &'a ReleaseCtx,
    ) -> Fut<'a, Option<Result<String, RuntimeError>>> {
        Box::pin(async move { Some(self.restart(ctx).await) })
    }

    fn liveness<'a>(&'a self, ctx: &'a ReleaseCtx) -> Fut<'a, Liveness> {
        Box::pin(SwarmRuntime::liveness(self, ctx))
    }

    /// Following the update to convergence proved that the tasks that
    /// answer run the new spec.
    fn owns<'a>(
        &'a self,
        _: &'a ReleaseCtx,
        _: &'a [crate::hosting::runtime::ports::Listener],
    ) -> Fut<'a, Result<(), crate::hosting::runtime::PortError>> {
        Box::pin(async { Ok(()) })
    }

    /// Swarm publishes through its own proxy or the routing mesh.
    fn publishes_itself(&self) -> bool {
        true
    }

    fn log_cmd(
        &self,
        ctx: &ReleaseCtx,
        lines: usize,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Option<Cmd> {
        Some(logs_cmd(&ctx.service, lines, since.map(|t| t.to_rfc3339())))
    }

    fn replicas<'a>(&'a self, ctx: &'a ReleaseCtx) -> Fut<'a, Option<String>> {
        Box::pin(async move {
            Some(match self.progress(ctx).await {
                Ok(p) => format!("{}/{}", p.ready(), p.replicas),
                Err(_) => "0/0".into(),
            })
        })
    }

    fn running<'a>(
        &'a self,
        _: &'a crate::hosting::release::ServiceDirs,
        service: &'a str,
    ) -> Fut<'a, Vec<(String, u16)>> {
        Box::pin(SwarmRuntime::running(self, service))
    }

    fn describe_build(&self, ctx: &ReleaseCtx) -> String {
        let pushed = ctx
            .spec
            .swarm
            .as_ref()
            .is_some_and(|s| s.registry.is_some());
        format!(
            "on the manager: docker build (Dockerfile + deployer's health check), image {}{}",
            registry_image(ctx),
            if pushed { ", pushed" } else { "" }
        )
    }

    fn describe_start(&self, ctx: &ReleaseCtx) -> String {
        format!(
            "on the manager: docker service create, or update --image {} (start-first)",
            registry_image(ctx)
        )
    }
}
