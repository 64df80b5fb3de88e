//! A site: the host a command acts on, with its runtimes and where service
//! directories live there. Made once per command, so one SSH connection
//! serves a whole deploy.

use crate::hosting::host::Host;
use crate::hosting::release::ServiceDirs;
use crate::hosting::runtime::{
    Runtime, RuntimeError, Runtimes, docker::DockerRuntime, swarm::SwarmRuntime,
    systemd::SystemdRuntime,
};
use crate::hosting::ssh::{SshSession, SshTarget};
use crate::input::config::DeployerConfig;
use crate::model::RuntimeKind;
use crate::support::cmd::{Cmd, LocalTransport, Transport};
use crate::support::error::{Failure, FailureKind};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where deploys go, before connecting.
#[derive(Clone, Debug)]
pub enum TargetSpec {
    /// This machine; service directories under STATE_DIR/services.
    Local,
    /// A server over SSH; service directories under `base_dir`.
    Ssh { ssh: SshTarget, base_dir: PathBuf },
}

impl TargetSpec {
    pub fn is_local(&self) -> bool {
        matches!(self, TargetSpec::Local)
    }

    /// `local`, or USER@HOST:PORT: as the host's name in jobs and output.
    pub fn name(&self) -> String {
        match self {
            TargetSpec::Local => "local".into(),
            TargetSpec::Ssh { ssh, .. } => ssh.display(),
        }
    }
}

/// A service and its releases running, with their ports.
type Seen = (String, Vec<(String, u16)>);

/// A connected host and its runtimes.
pub struct Site {
    pub host: Arc<Host>,
    runtimes: Runtimes,
    root: PathBuf,
    /// Whether a Docker engine answered, asked once per command: Validation,
    /// Start Service and a rollback all want to know.
    docker_engine: tokio::sync::OnceCell<Result<String, String>>,
    /// What Validation saw running, with its service.
    running_seen: std::sync::Mutex<Option<Seen>>,
}

impl Site {
    /// Connects to the target (no-op for this machine).
    pub async fn connect(
        target: &TargetSpec,
        state_dir: &std::path::Path,
    ) -> Result<Site, Failure> {
        let (host, root) = match target {
            TargetSpec::Local => (Host::Local(LocalTransport), state_dir.join("services")),
            TargetSpec::Ssh { ssh, base_dir } => {
                let session = SshSession::connect(ssh)
                    .await
                    .map_err(|e| Failure::new(FailureKind::Unreachable, e.to_string()))?;
                (Host::Ssh(Box::new(session)), base_dir.clone())
            }
        };
        let host = Arc::new(host);
        Ok(Site {
            runtimes: Runtimes::new(host.clone()),
            host,
            root,
            docker_engine: tokio::sync::OnceCell::new(),
            running_seen: Default::default(),
        })
    }

    /// This machine with the unit tests' scripted runtime in every slot.
    #[cfg(test)]
    pub fn scripted(
        state_dir: &std::path::Path,
        runtime: crate::hosting::runtime::scripted::ScriptedRuntime,
    ) -> Site {
        let host = Arc::new(Host::Local(LocalTransport));
        Site {
            runtimes: Runtimes::new(host.clone()).all_on(Arc::new(runtime)),
            host,
            root: state_dir.join("services"),
            docker_engine: tokio::sync::OnceCell::new_with(Some(Err("not in unit tests".into()))),
            running_seen: Default::default(),
        }
    }

    /// Where service directories live on this host.
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    pub fn dirs(&self, service: &str) -> ServiceDirs {
        ServiceDirs {
            root: self.root.join(service),
        }
    }

    pub fn runtime(&self, kind: RuntimeKind) -> &dyn Runtime {
        self.runtimes.get(kind)
    }

    pub fn swarm(&self) -> &SwarmRuntime {
        &self.runtimes.swarm
    }

    pub fn systemd(&self) -> &SystemdRuntime {
        &self.runtimes.systemd
    }

    pub fn docker(&self) -> &DockerRuntime {
        &self.runtimes.docker
    }

    /// Whether this host's Docker engine manages a swarm (asked with the
    /// engine's version, once).
    pub async fn swarm_manager(&self) -> bool {
        self.docker_engine()
            .await
            .is_ok_and(|v| v.ends_with(" true"))
    }

    /// The Docker engine's version and swarm role, or why none answers
    /// (asked once).
    pub async fn docker_engine(&self) -> Result<String, RuntimeError> {
        self.docker_engine
            .get_or_init(|| async {
                self.docker()
                    .engine_version()
                    .await
                    .map_err(|e| e.to_string())
            })
            .await
            .clone()
            .map_err(RuntimeError::Unavailable)
    }

    /// The address health checks use to reach services on this host.
    pub fn health_host(&self) -> String {
        self.host
            .address()
            .unwrap_or_else(|| "127.0.0.1".to_string())
    }

    /// Running releases of a service under any runtime.
    pub async fn running_releases(&self, dirs: &ServiceDirs, service: &str) -> Vec<(String, u16)> {
        let mut running = Vec::new();
        if self.host.is_local() {
            running.extend(
                self.runtime(RuntimeKind::Process)
                    .running(dirs, service)
                    .await,
            );
        }
        // Asked at once: `docker ps` answers nothing useful without an
        // engine, and waiting for `docker info` first costs its whole time;
        // a server's systemd units meanwhile.
        let systemd = async {
            match self.host.is_local() {
                true => Vec::new(),
                false => {
                    self.runtime(RuntimeKind::Systemd)
                        .running(dirs, service)
                        .await
                }
            }
        };
        let (engine, docker, systemd) = tokio::join!(
            self.docker_engine(),
            self.runtime(RuntimeKind::Docker).running(dirs, service),
            systemd
        );
        if engine.is_ok() {
            running.extend(docker);
        }
        if self.swarm_manager().await {
            running.extend(
                self.runtime(RuntimeKind::Swarm)
                    .running(dirs, service)
                    .await,
            );
        }
        running.extend(systemd);
        running
    }

    /// Validation keeps what it saw running for Start Service (`None`
    /// forgets it).
    pub fn remember_running(&self, seen: Option<(&str, &[(String, u16)])>) {
        *self.running_seen.lock().unwrap() = seen.map(|(s, r)| (s.to_string(), r.to_vec()));
    }

    /// What Validation saw running, for the first step that stops it: no
    /// step before Start Service starts or stops anything (the job holds
    /// the service's lock). Asked again when Validation did not look.
    pub async fn running_before_start(
        &self,
        dirs: &ServiceDirs,
        service: &str,
    ) -> Vec<(String, u16)> {
        let seen = self.running_seen.lock().unwrap().take();
        match seen {
            Some((s, running)) if s == service => running,
            _ => self.running_releases(dirs, service).await,
        }
    }

    /// Who listens on `port` on the host (nobody: empty).
    pub async fn listeners(&self, port: u16) -> Vec<crate::hosting::runtime::ports::Listener> {
        use crate::hosting::runtime::ports;
        if self.host.is_local() {
            // A walk of /proc: off the async workers.
            return tokio::task::spawn_blocking(move || ports::local(port))
                .await
                .unwrap_or_default();
        }
        match self
            .host
            .exec(&ports::remote_cmd(port), Duration::from_secs(30))
            .await
        {
            Ok(out) => ports::parse_remote(&out.stdout),
            Err(_) => Vec::new(),
        }
    }

    /// Whether something listens on `port` on the host.
    pub async fn port_in_use(&self, port: u16) -> bool {
        if self.host.is_local() {
            return !port_is_free(port);
        }
        let script = format!("ss -Hltn 'sport = :{port}' 2>/dev/null || true");
        match self
            .host
            .exec(
                &Cmd::new("sh").args(["-c", &script]),
                Duration::from_secs(30),
            )
            .await
        {
            Ok(out) => !out.stdout.trim().is_empty(),
            Err(_) => false,
        }
    }

    pub async fn close(&self) {
        if let Host::Ssh(s) = &*self.host {
            s.close().await;
        }
    }
}

/// The targets for a command: `hosts` (flags or a manifest's list), else the
/// config's `target.host` (SERVER_HOST), else this machine.
pub fn targets(config: &DeployerConfig, hosts: &[String]) -> Result<Vec<TargetSpec>, Failure> {
    let hosts: Vec<String> = if hosts.is_empty() {
        config.target.host.iter().cloned().collect()
    } else {
        hosts.to_vec()
    };
    let remote: Vec<&String> = hosts
        .iter()
        .filter(|h| !crate::input::plan::is_local_host(h))
        .collect();
    if remote.is_empty() {
        return Ok(vec![TargetSpec::Local]);
    }
    if remote.len() < hosts.len() {
        return Err(Failure::invalid(
            "'local' cannot be mixed with SSH hosts in one rollout",
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut targets = Vec::new();
    for h in remote {
        if !seen.insert(h.clone()) {
            return Err(Failure::invalid(format!("host {h} is listed twice")));
        }
        targets.push(ssh_target(config, h)?);
    }
    Ok(targets)
}

/// An SSH target for `host`, with the key, known_hosts and base directory
/// from the config (which flags have already overridden).
fn ssh_target(config: &DeployerConfig, host: &str) -> Result<TargetSpec, Failure> {
    let t = &config.target;
    let (mut user, hostname, port) = SshTarget::parse_address(host).map_err(Failure::invalid)?;
    if !host.contains('@')
        && let Some(u) = &t.user
    {
        user = u.clone();
    }
    // A key file when one is named, else the keys of a running ssh-agent.
    let auth = match (&t.ssh_key, std::env::var_os("SSH_AUTH_SOCK")) {
        (Some(key), _) => {
            let key = expand_home(key);
            if !key.is_file() {
                return Err(Failure::invalid(format!(
                    "SSH key {} does not exist",
                    key.display()
                )));
            }
            crate::hosting::ssh::SshAuth::KeyFile(key)
        }
        (None, Some(sock)) => crate::hosting::ssh::SshAuth::Agent(PathBuf::from(sock)),
        (None, None) => {
            return Err(Failure::invalid(format!(
                "deploying to {host} needs an SSH key: pass --ssh-key PATH, set SSH_KEY_PATH, \
                 or run an ssh-agent (SSH_AUTH_SOCK)"
            )));
        }
    };
    Ok(TargetSpec::Ssh {
        ssh: SshTarget {
            user,
            host: hostname,
            port,
            auth,
            known_hosts: t
                .known_hosts
                .as_deref()
                .map(expand_home)
                .unwrap_or_else(crate::hosting::ssh::default_known_hosts),
            pinned_host_key: t.host_key.clone(),
            accept_new: t.accept_new_host_key,
            connect_timeout: Duration::from_secs(15),
        },
        base_dir: t
            .base_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/srv/deployer")),
    })
}

/// `~/x` → `$HOME/x`, as a shell would.
fn expand_home(p: &std::path::Path) -> PathBuf {
    match p.strip_prefix("~") {
        Ok(rest) => std::env::home_dir().unwrap_or_default().join(rest),
        Err(_) => p.to_path_buf(),
    }
}

/// Whether nothing listens on a TCP port (any address).
///
/// Read from the kernel's socket tables rather than probed with a bind: two
/// deployers validating at once would otherwise see each other's probe.
pub fn port_is_free(port: u16) -> bool {
    match crate::hosting::runtime::ports::listening_inodes_known(port) {
        Some(inodes) => inodes.is_empty(),
        None => std::net::TcpListener::bind(("0.0.0.0", port)).is_ok(),
    }
}

#[cfg(test)]
mod port_tests {
    #[test]
    fn a_listening_socket_makes_its_port_busy() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(!super::port_is_free(port));
        drop(l);
        // Free again, unless another test running beside this one was
        // given the same port number in the meantime.
        let taken_again = || std::net::TcpListener::bind(("0.0.0.0", port)).is_err();
        assert!(super::port_is_free(port) || taken_again());
    }
}
