//! Realistic servers for the systemd tests: Debian containers with systemd
//! as PID 1 and sshd (shared/TESTBED.md §3), built by scripts/testhost-image.
//! Each host publishes its SSH port and the service ports on loopback.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const IMAGE: &str = "deployer-testhost:ready";

pub struct TestHost {
    pub name: String,
    pub ip: String,
    pub ssh_port: u16,
    pub key: PathBuf,
}

/// Whether the test-host image exists (scripts/test builds it). CI
/// requires it; elsewhere the tests say SKIPPED.
pub fn image_ready() -> bool {
    if !super::require_docker() {
        return false;
    }
    let ok = Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var("DEPLOYER_REQUIRE_DOCKER").is_ok_and(|v| v == "1") {
            panic!("image {IMAGE} is missing: run scripts/testhost-image");
        }
        super::skipped(&format!(
            "image {IMAGE} is missing (scripts/testhost-image builds it)"
        ));
    }
    ok
}

impl TestHost {
    /// Starts a host container named `name`, with `key.pub` authorized for
    /// root, publishing `ports` on 127.0.0.1.
    pub fn start(name: &str, key: &Path, ports: &[u16]) -> TestHost {
        Self::start_on("127.0.0.1", name, key, ports)
    }

    /// As [`TestHost::start`], publishing on another loopback address, so
    /// several hosts can serve the same port.
    pub fn start_on(ip: &str, name: &str, key: &Path, ports: &[u16]) -> TestHost {
        Self::start_with(ip, name, key, ports, &[])
    }

    /// As [`TestHost::start_on`], with more `docker run` flags (fault
    /// injection: `--tmpfs /opt:size=2m` for a small disk).
    pub fn start_with(ip: &str, name: &str, key: &Path, ports: &[u16], extra: &[&str]) -> TestHost {
        let ssh_port = super::free_port();
        let _ = Command::new("docker").args(["rm", "-f", name]).output();
        let mut args: Vec<String> = [
            "run",
            "-d",
            "--name",
            name,
            "--hostname",
            name,
            "--cap-add",
            "SYS_ADMIN",
            "--cgroupns=private",
            "--stop-signal",
            "SIGRTMIN+3",
            "--label",
            "deployer.testhost=1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push("-p".into());
        args.push(format!("{ip}:{ssh_port}:22"));
        for p in ports {
            args.push("-p".into());
            args.push(format!("{ip}:{p}:{p}"));
        }
        args.push("-v".into());
        args.push(format!(
            "{}:/root/.ssh/authorized_keys:ro",
            key.with_extension("pub").display()
        ));
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(IMAGE.into());
        args.push("/lib/systemd/systemd".into());
        let out = Command::new("docker").args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "docker run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let host = TestHost {
            name: name.to_string(),
            ip: ip.to_string(),
            ssh_port,
            key: key.to_path_buf(),
        };
        host.wait_for_ssh();
        host
    }

    fn wait_for_ssh(&self) {
        use std::io::Read;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect((self.ip.as_str(), self.ssh_port)) {
                s.set_read_timeout(Some(Duration::from_secs(2))).ok();
                let mut banner = [0u8; 4];
                if s.read_exact(&mut banner).is_ok() && &banner == b"SSH-" {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "host {} never answered SSH",
                self.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn address(&self) -> String {
        format!("root@{}:{}", self.ip, self.ssh_port)
    }

    /// Runs a command inside the host, returning stdout.
    pub fn exec(&self, cmd: &[&str]) -> String {
        let out = Command::new("docker")
            .arg("exec")
            .arg(&self.name)
            .args(cmd)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
    }
}

/// A client key pair for test hosts, made in `dir`.
pub fn client_key(dir: &Path) -> PathBuf {
    let key = dir.join("host_client_key");
    if !key.exists() {
        let ok = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
    key
}

/// A deployer.toml for deploying to `host` over SSH (with accept-new, a
/// known_hosts in the sandbox and /srv/deployer on the host).
pub fn config_for(sb: &super::Sandbox, host: &TestHost) -> String {
    let config = sb.dir.path().join(format!("{}.toml", host.name));
    std::fs::write(
        &config,
        format!(
            "[target]\nhost = \"{}\"\n{}",
            host.address(),
            ssh_settings(sb, &host.key)
        ),
    )
    .unwrap();
    config.to_str().unwrap().to_string()
}

/// The `[target]` keys every test host shares (no `host`).
pub fn ssh_settings(sb: &super::Sandbox, key: &Path) -> String {
    format!(
        "ssh_key = {:?}\nknown_hosts = {:?}\nbase_dir = \"/srv/deployer\"\naccept_new_host_key = true\n",
        key,
        sb.dir.path().join("known_hosts"),
    )
}
