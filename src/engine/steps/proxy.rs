//! Behind the proxy (`[proxy]`, `proxy.rs`: nginx): once the new release
//! passed its health and smoke checks on its private port, `switch proxy`
//! points the service's public port at it (undo: point it back); after `current`
//! moved, `drain old` lets the releases the proxy left finish what they
//! have in flight and stop, in the background, off the job's path.

use super::{Done, Step, StepCx, StepError, Undo};
use crate::hosting::proxy::{self, ProxyDirs};
use crate::hosting::site::Site;
use crate::model::*;
use crate::support::cmd::Cmd;
use crate::support::error::FailureKind;
use futures_util::future::BoxFuture;
use std::time::Duration;

const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Installing nginx with apt may take a while.
const ENSURE_TIMEOUT: Duration = Duration::from_secs(300);

fn dirs(site: &Site) -> ProxyDirs {
    ProxyDirs::new(site.root())
}

/// Why the proxy could not be set up or changed.
#[derive(Debug, thiserror::Error)]
pub(in crate::engine) enum ProxyError {
    #[error(transparent)]
    Host(#[from] crate::hosting::host::HostError),
    /// A command on the host failed: what it said.
    #[error("{said}")]
    Command { said: String },
    #[error(
        "the proxy needs nginx on {host}, which is missing, and deployer can only install it \
         as root with apt-get: install nginx there, or deploy without [proxy]"
    )]
    NoNginx { host: String },
}

/// Runs a command on the host; its output, or an error with its tail.
async fn run(site: &Site, cmd: &Cmd, timeout: Duration) -> Result<String, ProxyError> {
    let out = site.host.run(cmd, timeout).await?;
    match out.success() {
        true => Ok(out.stdout),
        false => Err(ProxyError::Command {
            said: format!("{}{}", out.stdout, out.tail(5)),
        }),
    }
}

/// Makes sure the proxy runs on the host (installed, started); says how.
pub(in crate::engine) async fn ensure(site: &Site) -> Result<String, ProxyError> {
    let script = proxy::ensure_script(&dirs(site));
    let said = run(site, &Cmd::new("sh").args(["-c", &script]), ENSURE_TIMEOUT).await?;
    Ok(said.trim().to_string())
}

/// Whether the host has the proxy, or can get it (root with apt-get);
/// why not, when it cannot.
pub(in crate::engine) async fn available(site: &Site) -> Result<&'static str, ProxyError> {
    let script = format!(
        "{}; if [ -n \"$ngx\" ]; then echo installed; \
         elif [ \"$(id -u)\" = 0 ] && command -v apt-get >/dev/null 2>&1; then echo installable; \
         else echo missing; fi",
        proxy::FIND_NGINX
    );
    let said = run(site, &Cmd::new("sh").args(["-c", &script]), ADMIN_TIMEOUT).await?;
    match said.trim() {
        "installed" => Ok("nginx is installed"),
        "installable" => Ok("nginx will be installed with apt"),
        _ => Err(ProxyError::NoNginx {
            host: site.host.name(),
        }),
    }
}

/// A service's file in the proxy; `None` when it has none.
pub(in crate::engine) async fn site_file(site: &Site, service: &str) -> Option<String> {
    let cmd = proxy::read_server(&dirs(site), service);
    run(site, &cmd, ADMIN_TIMEOUT)
        .await
        .ok()
        .filter(|s| !s.trim().is_empty())
}

/// The port the proxy sends a service to now; `None` when it has no file
/// for it (or the service is paused).
pub(in crate::engine) async fn upstream(site: &Site, service: &str) -> Option<u16> {
    proxy::upstream_of(&site_file(site, service).await?)
}

/// The services whose files listen on `port`, with their host names.
pub(in crate::engine) async fn sharing(site: &Site, port: u16) -> Vec<(String, Option<String>)> {
    let cmd = Cmd::new("sh").args(["-c", &proxy::sharing_script(&dirs(site), port)]);
    let out = run(site, &cmd, ADMIN_TIMEOUT).await.unwrap_or_default();
    out.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let service = words.next()?.to_string();
            Some((service, words.next().map(str::to_string)))
        })
        .collect()
}

/// Writes a service's file in the proxy, with a graceful reload.
pub(in crate::engine) async fn write_site(
    site: &Site,
    service: &str,
    content: &str,
) -> Result<(), ProxyError> {
    let script = proxy::write_site_script(&dirs(site), service, content);
    run(site, &Cmd::new("sh").args(["-c", &script]), ADMIN_TIMEOUT)
        .await
        .map(|_| ())
}

pub(in crate::engine) struct SwitchProxy;

impl Step for SwitchProxy {
    fn phase(&self) -> PhaseName {
        PhaseName::VerifyHealth
    }

    fn name(&self) -> &'static str {
        "switch proxy"
    }

    fn describe(&self, cx: &StepCx<'_>) -> String {
        match &cx.work.spec.proxy {
            Some(p) => format!(
                "on {}: nginx under {}: port {} to 127.0.0.1:{}, graceful reload",
                cx.site.host.name(),
                dirs(cx.site).root.display(),
                p.public_port,
                cx.work.spec.port
            ),
            None => String::new(),
        }
    }

    fn skip(&self, cx: &StepCx<'_>) -> Option<String> {
        cx.work
            .spec
            .proxy
            .is_none()
            .then(|| "no proxy ([proxy] in service.toml, or --proxy-port)".into())
    }

    fn run<'a>(&'a self, cx: &'a mut StepCx<'_>) -> BoxFuture<'a, Result<Done, StepError>> {
        Box::pin(async move {
            let fail = |e: ProxyError| StepError::new(FailureKind::Health, format!("proxy: {e}"));
            let Some(spec) = cx.work.spec.proxy.clone() else {
                return Ok(Done::quiet("no proxy"));
            };
            let (service, new_port) = (cx.work.service.clone(), cx.work.spec.port);
            let how = ensure(cx.site).await.map_err(fail)?;
            let before = upstream(cx.site, &service).await;
            if before.is_none() {
                // The first time: a release from before the proxy holds
                // the public port; it stops so the proxy can take it.
                stop_unproxied(cx).await;
            }
            let started = std::time::Instant::now();
            switch(cx.site, &service, &spec, new_port)
                .await
                .map_err(fail)?;
            let details = format!(
                "port {} now sends to release {} on port {new_port} (switched in {} ms; {how})",
                spec.public_port,
                cx.release.as_deref().unwrap_or("?"),
                started.elapsed().as_millis()
            );
            let done = Done::shown(details);
            Ok(match before {
                Some(old) => done.with_undo(SwitchBack {
                    proxy: spec.clone(),
                    port: old,
                }),
                None => done,
            })
        })
    }
}

/// Stops the service's releases that run without the proxy (on the
/// public port itself).
async fn stop_unproxied(cx: &StepCx<'_>) {
    let new = cx.release.clone().unwrap_or_default();
    for (rel, _) in cx.site.running_releases(&cx.dirs, &cx.work.service).await {
        if rel == new {
            continue;
        }
        let ctx = cx.earlier_release(&rel).await;
        if ctx.spec.proxy.is_none() {
            cx.note(&format!("stopping release {rel}: the proxy takes its port"));
            let _ = cx.runtime(&ctx.spec).stop(&ctx).await;
        }
    }
}

/// The host's time and the drains recorded there: release → the time it
/// stops by (both by the host's clock).
/// `None` when the host cannot say.
pub(in crate::engine) async fn drains(
    site: &Site,
    dirs: &crate::hosting::release::ServiceDirs,
) -> Option<(i64, std::collections::HashMap<String, i64>)> {
    let script = proxy::drains_script(&dirs.root);
    let out = run(site, &Cmd::new("sh").args(["-c", &script]), ADMIN_TIMEOUT)
        .await
        .ok()?;
    let mut now = None;
    let mut drains = std::collections::HashMap::new();
    for line in out.lines() {
        let Some((name, value)) = line.split_once(' ') else {
            continue;
        };
        let Ok(value) = value.trim().parse() else {
            continue;
        };
        match name {
            "now" => now = Some(value),
            release => {
                drains.insert(release.to_string(), value);
            }
        }
    }
    Some((now?, drains))
}

/// Removes a release's drain record on a host (it has stopped).
pub(in crate::engine) async fn forget_drain(
    site: &Site,
    dirs: &crate::hosting::release::ServiceDirs,
    release: &str,
) {
    let file = dirs.drain_file(release);
    let cmd = Cmd::new("rm").args(["-f", &file.to_string_lossy()]);
    let _ = run(site, &cmd, ADMIN_TIMEOUT).await;
}

/// The certificate a service's HTTPS needs, from the internal CA.
pub(in crate::engine) async fn ensure_tls(site: &Site, spec: &ProxySpec) -> Result<(), ProxyError> {
    match proxy::tls_script(&dirs(site), spec) {
        Some(script) => run(site, &Cmd::new("sh").args(["-c", &script]), ENSURE_TIMEOUT)
            .await
            .map(|_| ()),
        None => Ok(()),
    }
}

/// Points the proxy at a release (recovery: at `current`), unless it
/// does already.
pub(in crate::engine) async fn point_at_current(
    site: &Site,
    ctx: &crate::hosting::runtime::ReleaseCtx,
) -> Result<(), ProxyError> {
    let Some(spec) = &ctx.spec.proxy else {
        return Ok(());
    };
    let now = upstream(site, &ctx.service).await;
    if now.is_none() || now == Some(ctx.spec.port) {
        // No file (paused, or never switched) or already there.
        return Ok(());
    }
    switch(site, &ctx.service, spec, ctx.spec.port).await
}

/// Points a service's public port at `upstream`, gracefully.
async fn switch(
    site: &Site,
    service: &str,
    spec: &ProxySpec,
    upstream: u16,
) -> Result<(), ProxyError> {
    ensure_tls(site, spec).await?;
    let script = proxy::switch_script(&dirs(site), service, spec, upstream);
    run(site, &Cmd::new("sh").args(["-c", &script]), ADMIN_TIMEOUT)
        .await
        .map(|_| ())
}

/// Points the proxy back at the release it sent to before.
struct SwitchBack {
    proxy: ProxySpec,
    port: u16,
}

impl Undo for SwitchBack {
    fn describe(&self) -> String {
        format!("switch the proxy back to port {}", self.port)
    }

    fn undo<'a>(&'a self, cx: &'a StepCx<'_>, _: &'a mut RollbackRecord) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let back = switch(cx.site, &cx.work.service, &self.proxy, self.port).await;
            if let Err(e) = back {
                cx.note(&format!("rollback: switching the proxy back: {e}"));
            }
        })
    }
}

pub(in crate::engine) struct DrainOld;

impl Step for DrainOld {
    fn phase(&self) -> PhaseName {
        PhaseName::VerifyHealth
    }

    fn name(&self) -> &'static str {
        "drain old"
    }

    fn describe(&self, cx: &StepCx<'_>) -> String {
        match &cx.work.spec.proxy {
            Some(p) => format!(
                "the releases the proxy left stop after {} s, in the background",
                p.drain_secs
            ),
            None => String::new(),
        }
    }

    fn skip(&self, cx: &StepCx<'_>) -> Option<String> {
        cx.work.spec.proxy.is_none().then(|| "no proxy".into())
    }

    fn run<'a>(&'a self, cx: &'a mut StepCx<'_>) -> BoxFuture<'a, Result<Done, StepError>> {
        Box::pin(async move {
            let Some(spec) = cx.work.spec.proxy.clone() else {
                return Ok(Done::quiet("no proxy"));
            };
            let new = cx.release.clone().unwrap_or_default();
            let until = chrono::Utc::now().timestamp() + spec.drain_secs as i64;
            let local =
                crate::hosting::release::ServiceDirs::new(&cx.engine.state_dir, &cx.work.service);
            if let Err(e) = local.note_drain(until) {
                cx.note(&format!("warning: recording the drain: {e}"));
            }
            let mut draining = Vec::new();
            for (rel, _) in cx.site.running_releases(&cx.dirs, &cx.work.service).await {
                if rel == new {
                    continue;
                }
                let ctx = cx.earlier_release(&rel).await;
                let stop = cx.runtime(&ctx.spec).stop_shell(&ctx);
                let script = proxy::drain_script(&cx.dirs.root, &rel, spec.drain_secs, &stop);
                match run(
                    cx.site,
                    &Cmd::new("sh").args(["-c", &script]),
                    ADMIN_TIMEOUT,
                )
                .await
                {
                    Ok(_) => draining.push(rel),
                    Err(e) => cx.note(&format!("warning: draining release {rel}: {e}")),
                }
            }
            Ok(Done::shown(if draining.is_empty() {
                "nothing else was running".to_string()
            } else {
                format!(
                    "release {} drains for {} s, then stops",
                    draining.join(", "),
                    spec.drain_secs
                )
            }))
        })
    }
}
