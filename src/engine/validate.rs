//! Validation: the checks that need the target (no writes), run on every
//! host before a job is recorded. Also chooses a rollback's release.

use super::{Event, Sink};
use crate::hosting::runtime::RuntimeError;
use crate::hosting::site::{Site, TargetSpec};
use crate::input::config::Method;
use crate::input::plan::Plan;
use crate::model::{Phase, PhaseName, PhaseState, Release, ReleaseStatus, RuntimeKind, StepRecord};
use crate::store::Store;
use crate::support::error::{Failure, FailureKind};
use crate::support::secret::Redactor;
use chrono::{DateTime, Utc};
use std::path::Path;

const FAILED: &str = "Validation failed";

/// A finished Validation phase.
pub(super) fn phase(state: PhaseState) -> Phase {
    Phase {
        steps: vec![StepRecord {
            name: "check target".into(),
            state: state.clone(),
        }],
        state,
        ..Phase::pending(PhaseName::Validation)
    }
}

/// A Validation phase that passed just now.
pub(super) fn passed(details: String) -> Phase {
    phase(PhaseState::succeeded(Utc::now(), details))
}

/// Reports a refused Validation and returns the failure.
fn refuse(sink: &dyn Sink, started: DateTime<Utc>, f: Failure, redactor: &Redactor) -> Failure {
    let error = redactor.redact(&f.message);
    let failed = phase(PhaseState::failed(started, FAILED.into(), error));
    sink.event(&Event::PhaseFinished(&failed.view()));
    f
}

/// Connects to every target; a host that cannot be reached fails
/// Validation.
pub(super) async fn connect_all(
    targets: &[TargetSpec],
    state_dir: &Path,
    plan: &Plan,
    sink: &dyn Sink,
) -> Result<Vec<Site>, Failure> {
    let started = Utc::now();
    sink.event(&Event::PhaseStarted(PhaseName::Validation));
    let mut sites = Vec::with_capacity(targets.len());
    for target in targets {
        match Site::connect(target, state_dir).await {
            Ok(site) => sites.push(site),
            Err(f) => {
                for s in &sites {
                    s.close().await;
                }
                return Err(refuse(sink, started, f, &plan.redactor()));
            }
        }
    }
    Ok(sites)
}

/// Validation on every host; the phase fails if any host fails it.
/// Resolves `auto` on each host to the method that host can run; hosts
/// that would run it differently are refused (a release runs with one
/// method everywhere: its record, rollbacks and recovery read one spec).
pub(super) async fn all(
    sites: &[Site],
    plan: &mut Plan,
    sink: &dyn Sink,
) -> Result<Phase, Failure> {
    // Timed from here: waiting for the lock is not validating.
    let started = Utc::now();
    let redactor = plan.redactor();
    let mut details = Vec::new();
    let mut runtimes = Vec::with_capacity(sites.len());
    for site in sites {
        match one(site, plan).await {
            Ok((d, runtime)) => {
                details.push(d);
                runtimes.push(runtime);
            }
            Err(e) => {
                let e = if sites.len() > 1 {
                    format!("{}: {e}", site.host.name())
                } else {
                    e.to_string()
                };
                let f = Failure::invalid(redactor.redact(&e));
                return Err(refuse(sink, started, f, &redactor));
            }
        }
    }
    match one_method(sites, &runtimes) {
        Ok(runtime) => plan.spec.runtime = runtime,
        Err(e) => {
            let f = Failure::invalid(e.to_string());
            return Err(refuse(sink, started, f, &redactor));
        }
    }
    if plan.spec.proxy.is_some() {
        // A release's private port is the server's own business (and
        // usually firewalled): health is checked from the server itself.
        if sites.iter().any(|s| !s.host.is_local()) {
            plan.spec.health.from_target = true;
        }
        match private_port(sites, plan).await {
            Ok(note) => details.push(note),
            Err(f) => return Err(refuse(sink, started, f, &redactor)),
        }
    }
    let passed = phase(PhaseState::succeeded(
        started,
        redactor.redact(&details.join("; ")),
    ));
    sink.event(&Event::PhaseFinished(&passed.view()));
    Ok(passed)
}

/// The one method every host runs the release with.
fn one_method(sites: &[Site], runtimes: &[RuntimeKind]) -> Result<RuntimeKind, Refusal> {
    let names: Vec<String> = sites.iter().map(|s| s.host.name()).collect();
    method_of(&names, runtimes)
}

fn method_of(hosts: &[String], runtimes: &[RuntimeKind]) -> Result<RuntimeKind, Refusal> {
    let first = runtimes.first().copied().unwrap_or(RuntimeKind::Process);
    if runtimes.iter().all(|r| *r == first) {
        return Ok(first);
    }
    let each: Vec<String> = hosts
        .iter()
        .zip(runtimes)
        .map(|(h, r)| format!("{} on {h}", r.as_str()))
        .collect();
    Err(Refusal::MixedMethods(each.join(", ")))
}

/// Why a host cannot take the deploy.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("the process method runs services on this machine only; use docker on {0}")]
    ProcessOnRemote(String),
    #[error("the docker method needs a Docker engine, and none answers: {0}")]
    NoDockerEngine(RuntimeError),
    #[error(transparent)]
    NoSystemd(RuntimeError),
    #[error("the swarm method needs a swarm manager: {0}")]
    NoSwarm(RuntimeError),
    #[error("the {method} method needs a start command: set `start` in {manifest} or pass --start")]
    NoStartCommand {
        method: &'static str,
        manifest: String,
    },
    #[error(
        "the {method} method needs a start command, and this Python service defines no ASGI app \
         deployer can start (`app = ...` in main.py or app.py): set `start` in {manifest}, \
         or `asgi = \"module:app\"` under [python] there, or pass --start"
    )]
    NoPythonStart {
        method: &'static str,
        manifest: String,
    },
    #[error("the docker and swarm methods need {0}, which is missing")]
    NoDockerfile(String),
    #[error("port {0} is in use by another program, {1}; stop it or choose another port")]
    PortTaken(u16, String),
    #[error("{0}")]
    Proxy(String),
    #[error(transparent)]
    NoProxy(#[from] super::steps::proxy::ProxyError),
    #[error(
        "method auto would run the release as {0}: a release runs with one method on all its \
         hosts; set `method` in service.toml (or --method)"
    )]
    MixedMethods(String),
}

/// The runtime a method means on this host, or why it cannot run here.
async fn runtime(site: &Site, method: Method) -> Result<RuntimeKind, Refusal> {
    Ok(match method {
        Method::Process if !site.host.is_local() => {
            return Err(Refusal::ProcessOnRemote(site.host.name()));
        }
        Method::Process => RuntimeKind::Process,
        Method::Docker => {
            site.docker_engine()
                .await
                .map_err(Refusal::NoDockerEngine)?;
            RuntimeKind::Docker
        }
        Method::Systemd => {
            site.systemd()
                .available()
                .await
                .map_err(Refusal::NoSystemd)?;
            RuntimeKind::Systemd
        }
        Method::Swarm => {
            site.swarm().manager().await.map_err(Refusal::NoSwarm)?;
            RuntimeKind::Swarm
        }
        Method::Auto => match site.docker_engine().await {
            Ok(_) => RuntimeKind::Docker,
            Err(_) if site.host.is_local() => RuntimeKind::Process,
            Err(_) => RuntimeKind::Systemd,
        },
    })
}

/// Validation on one host.
async fn one(site: &Site, plan: &mut Plan) -> Result<(String, RuntimeKind), Refusal> {
    site.remember_running(None);
    // What holds the port is asked while the runtime is checked (`docker
    // ps` need not wait for `docker info`).
    let dirs = site.dirs(&plan.service_name);
    let holders = async {
        let port = plan.spec.port;
        match plan.spec.proxy.is_none() && site.port_in_use(port).await {
            true => Some(site.running_releases(&dirs, &plan.service_name).await),
            false => None,
        }
    };
    let (runtime, holders) = tokio::join!(runtime(site, plan.method), holders);
    let runtime = runtime?;
    // A release on the host itself starts with a command; one in a
    // container is built from a Dockerfile.
    if runtime.on_host() {
        if plan
            .spec
            .start
            .as_deref()
            .is_none_or(|s| s.trim().is_empty())
        {
            let manifest = plan.source.join(crate::input::config::MANIFEST_FILE);
            let (method, manifest) = (runtime.as_str(), manifest.display().to_string());
            return Err(if plan.spec.python.is_some() {
                Refusal::NoPythonStart { method, manifest }
            } else {
                Refusal::NoStartCommand { method, manifest }
            });
        }
    } else {
        let dockerfile = plan.source.join(&plan.spec.dockerfile);
        if !dockerfile.is_file() {
            return Err(Refusal::NoDockerfile(dockerfile.display().to_string()));
        }
    }
    let port_note = port(site, plan, holders).await?;
    let python = match &plan.spec.python {
        Some(p) if runtime.on_host() => {
            let start = plan.spec.start.as_deref().unwrap_or("");
            format!(", Python service ({}; starts with `{start}`)", p.deps)
        }
        _ => String::new(),
    };
    let python = match &plan.spec.swarm {
        Some(s) => format!(
            "{python}, {} replica(s) on the swarm it manages (published by {})",
            s.replicas,
            match s.publish {
                crate::model::SwarmPublish::Proxy => "deployer's proxy",
                crate::model::SwarmPublish::Mesh => "the routing mesh",
            }
        ),
        None => python,
    };
    let said = format!(
        "Service files validated: method {} on {}, {port_note}{python}",
        runtime.as_str(),
        site.host.name()
    );
    Ok((said, runtime))
}

/// The service's port is free, or held by this service itself.
/// Behind the proxy: a private port for the new release, free on every
/// host and held by none of the service's releases.
async fn private_port(sites: &[Site], plan: &mut Plan) -> Result<String, Failure> {
    let Some(proxy) = plan.spec.proxy.clone() else {
        return Ok(String::new());
    };
    let mut taken = vec![proxy.public_port];
    for site in sites {
        let dirs = site.dirs(&plan.service_name);
        let running = site.running_releases(&dirs, &plan.service_name).await;
        taken.extend(running.into_iter().map(|(_, p)| p));
    }
    let seed = format!(
        "{}{}",
        plan.service_name,
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
    );
    for _ in 0..50 {
        let Some(port) =
            crate::hosting::proxy::private_port(&seed, proxy.private_ports, &taken, |_| true)
        else {
            break;
        };
        let mut free = true;
        for site in sites {
            free &= !site.port_in_use(port).await;
        }
        if free {
            plan.spec.port = port;
            return Ok(format!(
                "behind the proxy on port {}, private port {port}",
                proxy.public_port
            ));
        }
        taken.push(port);
    }
    Err(Failure::invalid(format!(
        "no free private port in {}-{} (proxy.private_ports)",
        proxy.private_ports.0, proxy.private_ports.1
    )))
}

/// A port the proxy will listen on for a service it does not serve yet:
/// free, shared by host name, or held by the service's own release from
/// before the proxy (which stops at the switch).
async fn proxy_port(
    site: &Site,
    plan: &Plan,
    proxy: &crate::model::ProxySpec,
    port: u16,
) -> Result<String, Refusal> {
    if !site.port_in_use(port).await {
        return Ok(format!("port {port} free"));
    }
    let sharing = super::steps::proxy::sharing(site, port).await;
    if !sharing.is_empty() {
        return shared(port, proxy.host.as_deref(), &sharing);
    }
    let dirs = site.dirs(&plan.service_name);
    let running = site.running_releases(&dirs, &plan.service_name).await;
    match running.iter().find(|(_, p)| *p == port) {
        Some((rel, _)) => Ok(format!("port {port} held by this service's release {rel}")),
        None => Err(taken(site, port).await),
    }
}

/// A port in use by something that is not the service's.
async fn taken(site: &Site, port: u16) -> Refusal {
    let listeners = site.listeners(port).await;
    Refusal::PortTaken(port, crate::hosting::runtime::ports::describe(&listeners))
}

/// Whether a service may share the proxy's `public` port with those
/// (service, host) that serve on it: by a host name none of them has.
fn shared(
    public: u16,
    host: Option<&str>,
    sharing: &[(String, Option<String>)],
) -> Result<String, Refusal> {
    let Some(host) = host else {
        let names: Vec<&str> = sharing.iter().map(|(s, _)| s.as_str()).collect();
        return Err(Refusal::Proxy(format!(
            "port {public} is served by the proxy for {}; set [proxy] host to share it by name",
            names.join(", ")
        )));
    };
    if let Some((other, _)) = sharing.iter().find(|(_, h)| h.as_deref() == Some(host)) {
        return Err(Refusal::Proxy(format!(
            "port {public} already serves {host} for service '{other}'"
        )));
    }
    Ok(format!(
        "port {public} shared through the proxy, for {host}"
    ))
}

/// `holders`: the service's running releases, when the port is in use.
async fn port(
    site: &Site,
    plan: &Plan,
    holders: Option<Vec<(String, u16)>>,
) -> Result<String, Refusal> {
    if let Some(proxy) = &plan.spec.proxy {
        if super::steps::proxy::site_file(site, &plan.service_name)
            .await
            .is_some()
        {
            return Ok(format!("port {} served by the proxy", proxy.public_port));
        }
        let mut said = vec![
            super::steps::proxy::available(site)
                .await
                .map_err(Refusal::NoProxy)?
                .to_string(),
        ];
        for port in std::iter::once(proxy.public_port).chain(proxy.tls_port) {
            said.push(proxy_port(site, plan, proxy, port).await?);
        }
        return Ok(said.join(", "));
    }
    let port = plan.spec.port;
    let Some(running) = holders else {
        return Ok(format!("port {port} free"));
    };
    site.remember_running(Some((&plan.service_name, &running)));
    match running.iter().find(|(_, p)| *p == port) {
        Some((rel, _)) => Ok(format!("port {port} held by this service's release {rel}")),
        None => Err(taken(site, port).await),
    }
}

/// The release a rollback goes to: `to`, or the previous one. It must
/// exist, not be current, and still have its files.
pub(super) async fn rollback_target(
    sites: &[Site],
    store: &Store,
    service: &str,
    to: Option<&str>,
) -> Result<Release, Failure> {
    let releases = store.releases(service).await?;
    let mut currents = Vec::with_capacity(sites.len());
    for site in sites {
        currents.push(site.host.current(&site.dirs(service)).await);
    }
    let current = currents.first().cloned().flatten();
    let target = match to {
        Some(id) => releases.into_iter().find(|r| r.id == id).ok_or_else(|| {
            Failure::not_found(format!("service '{service}' has no release '{id}'"))
        })?,
        None => releases
            .into_iter()
            .find(|r| r.status == ReleaseStatus::Previous && Some(&r.id) != current.as_ref())
            .ok_or_else(|| {
                Failure::new(
                    FailureKind::Conflict,
                    format!("service '{service}' has no previous release to roll back to"),
                )
            })?,
    };
    if currents.iter().all(|c| c.as_ref() == Some(&target.id)) {
        return Err(Failure::new(
            FailureKind::Conflict,
            format!("release {} is already current", target.id),
        ));
    }
    for site in sites {
        if !site.host.has_release(&site.dirs(service), &target.id).await {
            return Err(Failure::not_found(format!(
                "release {} was pruned on {}; its files are gone",
                target.id,
                site.host.name()
            )));
        }
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_resolved_differently_on_two_hosts_is_refused_naming_each() {
        let hosts = ["a@h1:22".to_string(), "b@h2:22".to_string()];
        let same = [RuntimeKind::Systemd, RuntimeKind::Systemd];
        assert_eq!(method_of(&hosts, &same).unwrap(), RuntimeKind::Systemd);
        let mixed = [RuntimeKind::Docker, RuntimeKind::Systemd];
        let e = method_of(&hosts, &mixed).unwrap_err().to_string();
        assert!(e.contains("docker on a@h1:22, systemd on b@h2:22"), "{e}");
        assert!(e.contains("set `method`"), "{e}");
    }
}
