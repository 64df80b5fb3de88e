//! The reverse proxy in front of services with a public port (`[proxy]`):
//! Caddy, one per host, driven through its admin API on a unix socket
//! (config changes are atomic and keep open connections). Each such
//! service is a Caddy server listening on the public port and proxying to
//! the private port of its current release; a deploy starts the new
//! release beside the old one and switches the upstream once it is
//! healthy.
//!
//! Everything here is shell run by the host (this machine or over SSH),
//! so the admin API is reached the same way on both: `curl
//! --unix-socket` on the host itself.

use crate::cmd::{Cmd, quote};
use std::path::{Path, PathBuf};

/// Where a host's proxy keeps its files: `BASE/.proxy` (here, the state
/// directory's `services/.proxy`).
#[derive(Clone, Debug)]
pub struct ProxyDirs {
    pub root: PathBuf,
}

impl ProxyDirs {
    pub fn new(services_root: &Path) -> ProxyDirs {
        ProxyDirs {
            root: services_root.join(".proxy"),
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.root.join("admin.sock")
    }

    fn config(&self) -> PathBuf {
        self.root.join("caddy.json")
    }

    fn log(&self) -> PathBuf {
        self.root.join("caddy.log")
    }
}

/// Caddy's first configuration: the admin API on the unix socket, no
/// servers yet. Later changes are autosaved and resumed after a restart.
fn initial_config(dirs: &ProxyDirs) -> String {
    serde_json::json!({
        "admin": {
            "listen": format!("unix/{}", dirs.socket().display()),
            "origins": ["localhost"],
        },
        "apps": {"http": {"servers": {}}},
    })
    .to_string()
}

/// A shell script that makes sure Caddy runs on the host: installs it with
/// apt when it is missing (as root, on Debian or Ubuntu), writes its first
/// configuration, and starts it (a systemd unit where systemd runs, else a
/// detached process) unless its admin API already answers. Prints what it
/// did.
pub fn ensure_script(dirs: &ProxyDirs) -> String {
    let root = quote(&dirs.root.to_string_lossy());
    let sock = quote(&dirs.socket().to_string_lossy());
    let config = quote(&dirs.config().to_string_lossy());
    let log = quote(&dirs.log().to_string_lossy());
    let initial = quote(&initial_config(dirs));
    format!(
        r#"set -e
said=""
if ! command -v caddy >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq caddy >/dev/null 2>&1 \
      || {{ apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null 2>&1 \
            && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq caddy >/dev/null; }}
    said="caddy installed with apt; "
  else
    echo "caddy is not installed on this host, and deployer can only install it as root with apt-get" >&2
    exit 1
  fi
fi
up() {{ curl -sf --unix-socket {sock} http://localhost/config/ >/dev/null 2>&1; }}
if up; then echo "${{said}}caddy $(caddy version | cut -d' ' -f1) answers"; exit 0; fi
mkdir -p {root}
[ -f {config} ] || printf '%s' {initial} > {config}
rm -f {sock}
if [ -d /run/systemd/system ] && [ "$(id -u)" = 0 ]; then
  cat > /etc/systemd/system/deployer-proxy.service <<UNIT
[Unit]
Description=deployer's reverse proxy (Caddy)
After=network-online.target
[Service]
Environment=XDG_CONFIG_HOME={root} XDG_DATA_HOME={root}
ExecStart=$(command -v caddy) run --resume --config {config}
Restart=on-failure
[Install]
WantedBy=multi-user.target
UNIT
  systemctl daemon-reload
  systemctl enable --now deployer-proxy.service >/dev/null 2>&1
  how="a systemd unit"
else
  XDG_CONFIG_HOME={root} XDG_DATA_HOME={root} setsid nohup caddy run --resume --config {config} >>{log} 2>&1 </dev/null &
  how="a detached process"
fi
i=0
until up; do
  i=$((i+1)); [ $i -lt 100 ] || {{ echo "caddy did not start; its log:" >&2; tail -5 {log} >&2 || true; exit 1; }}
  sleep 0.1
done
echo "${{said}}caddy $(caddy version | cut -d' ' -f1) started as $how""#
    )
}

/// A request to Caddy's admin API on the host.
fn admin(dirs: &ProxyDirs, method: &str, path: &str, body: Option<&str>) -> Cmd {
    let mut cmd = Cmd::new("curl")
        .args(["-sS", "--fail-with-body", "--max-time", "10", "-X", method])
        .args(["-H", "Content-Type: application/json"])
        .arg("--unix-socket")
        .arg(dirs.socket().to_string_lossy())
        .arg(format!("http://localhost{path}"));
    if let Some(b) = body {
        cmd = cmd.args(["--data-binary", b]);
    }
    cmd
}

/// Caddy's name for a service's server.
fn server_path(service: &str) -> String {
    format!("/config/apps/http/servers/{service}")
}

/// Reads a service's server (`null` when it has none).
pub fn read_server(dirs: &ProxyDirs, service: &str) -> Cmd {
    admin(dirs, "GET", &server_path(service), None)
}

/// Creates (or replaces) a service's server: the public port, proxying
/// to `upstream`.
pub fn put_server(dirs: &ProxyDirs, service: &str, public_port: u16, upstream: u16) -> Cmd {
    let server = serde_json::json!({
        "listen": [format!(":{public_port}")],
        "routes": [{"handle": [{
            "handler": "reverse_proxy",
            "upstreams": [{"dial": format!("127.0.0.1:{upstream}")}],
        }]}],
    });
    admin(
        dirs,
        "POST",
        &server_path(service),
        Some(&server.to_string()),
    )
}

/// Points a service's server at another port, in place: open connections
/// finish on the old upstream, new requests go to the new one.
pub fn switch(dirs: &ProxyDirs, service: &str, upstream: u16) -> Cmd {
    let upstreams = serde_json::json!([{"dial": format!("127.0.0.1:{upstream}")}]);
    admin(
        dirs,
        "PATCH",
        &format!("{}/routes/0/handle/0/upstreams", server_path(service)),
        Some(&upstreams.to_string()),
    )
}

/// The upstream port a server's JSON names.
pub fn upstream_of(server_json: &str) -> Option<u16> {
    let v: serde_json::Value = serde_json::from_str(server_json).ok()?;
    let dial = v["routes"][0]["handle"][0]["upstreams"][0]["dial"].as_str()?;
    dial.rsplit(':').next()?.parse().ok()
}

/// A shell script that stops a release after `drain_secs` (its in-flight
/// requests finish), in the background, unless it became current again
/// meanwhile (a rollback switched back to it).
pub fn drain_script(service_root: &Path, release: &str, drain_secs: u64, stop: &str) -> String {
    let current = quote(&service_root.join("current").to_string_lossy());
    let target = quote(&format!("releases/{release}"));
    let inner =
        format!("sleep {drain_secs}; [ \"$(readlink {current})\" = {target} ] || {{ {stop}; }}");
    format!(
        "setsid nohup sh -c {} >/dev/null 2>&1 </dev/null &",
        quote(&inner)
    )
}

/// A private port for a release: from `range`, starting at a place the
/// release id picks, the first `free` says is free and `taken` does not hold.
pub fn private_port(
    release_seed: &str,
    range: (u16, u16),
    taken: &[u16],
    free: impl Fn(u16) -> bool,
) -> Option<u16> {
    let (lo, hi) = range;
    let span = u32::from(hi - lo) + 1;
    let start = blake3::hash(release_seed.as_bytes()).as_bytes()[..4]
        .iter()
        .fold(0u32, |a, b| (a << 8) | u32::from(*b))
        % span;
    (0..span)
        .map(|i| lo + ((start + i) % span) as u16)
        .find(|p| !taken.contains(p) && free(*p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_switch_and_drain_as_caddy_and_sh_read_them() {
        let dirs = ProxyDirs::new(Path::new("/srv/deployer"));
        let put = put_server(&dirs, "web", 8080, 20001).display();
        assert!(put.contains("/config/apps/http/servers/web"), "{put}");
        assert!(put.contains("127.0.0.1:20001"), "{put}");
        let json = r#"{"listen":[":8080"],"routes":[{"handle":[{"handler":"reverse_proxy","upstreams":[{"dial":"127.0.0.1:20001"}]}]}]}"#;
        assert_eq!(upstream_of(json), Some(20001));
        assert_eq!(upstream_of("null"), None);
        let drain = drain_script(Path::new("/srv/deployer/web"), "r1", 10, "kill 1");
        assert!(drain.starts_with("setsid nohup sh -c "), "{drain}");
        assert!(drain.contains("sleep 10"), "{drain}");
        let p = private_port("r1", (20000, 20009), &[], |_| true).unwrap();
        assert!((20000..=20009).contains(&p));
        assert_eq!(private_port("r1", (20000, 20000), &[20000], |_| true), None);
        let other = private_port("r1", (20000, 20009), &[p], |_| true).unwrap();
        assert_ne!(other, p);
    }
}
