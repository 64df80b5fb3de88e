//! The reverse proxy in front of services with a public port (`[proxy]`):
//! nginx, one per host, with a file per service under its own prefix
//! (`BASE/.proxy`). A service's file listens on the public port and
//! proxies to the private port of its current release; a deploy starts
//! the new release beside the old one, rewrites the file once the new one
//! is healthy and reloads nginx gracefully: new workers take new
//! connections, old ones finish what they have and exit, nothing is
//! dropped. (Caddy was tried first: its admin API reloads the server on
//! every change and reset 2 of 15,573 connections over 20 switches here;
//! nginx reset none of 25,787. docs/benchmarks.md.)
//!
//! Everything here is shell run by the host (this machine or over SSH).

use crate::model::ProxySpec;
use crate::support::cmd::{Cmd, quote};
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

    fn config(&self) -> PathBuf {
        self.root.join("nginx.conf")
    }

    pub fn pid_file(&self) -> PathBuf {
        self.root.join("nginx.pid")
    }

    fn site(&self, service: &str) -> PathBuf {
        self.root.join("sites").join(format!("{service}.conf"))
    }
}

/// nginx's own configuration: a pid file and logs under the prefix, and
/// every service's file.
fn main_config(dirs: &ProxyDirs) -> String {
    let root = dirs.root.display();
    format!(
        "# Written by deployer. Services: sites/*.conf.\n\
         pid {root}/nginx.pid;\n\
         error_log {root}/logs/error.log warn;\n\
         worker_processes auto;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_max_body_size 0;\n  \
         proxy_read_timeout 300s;\n  include {root}/sites/*.conf;\n}}\n"
    )
}

/// A service's file: the public port, proxying to `upstream`.
pub fn site_config(service: &str, proxy: &ProxySpec, upstream: u16) -> String {
    let public_port = proxy.public_port;
    let server_name = server_name(proxy);
    format!(
        "# Written by deployer for {service}: port {public_port} to its current release.\n\
         upstream deployer_{service} {{ server 127.0.0.1:{upstream}; keepalive 16; }}\n\
         server {{\n  listen {public_port};\n{server_name}  location / {{\n    \
         proxy_pass http://deployer_{service};\n    proxy_http_version 1.1;\n    \
         proxy_set_header Connection \"\";\n    proxy_set_header Host $http_host;\n    \
         proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n  }}\n}}\n"
    )
}

/// A service's file while it is paused: 503 and a page, on the public port.
pub fn maintenance_config(service: &str, proxy: &ProxySpec, message: &str) -> String {
    let public_port = proxy.public_port;
    let server_name = server_name(proxy);
    let text: String = message
        .chars()
        .filter(|c| !c.is_control())
        .take(500)
        .collect();
    let page = format!(
        "<!doctype html><meta charset=utf-8><title>{service}: down for maintenance</title>\
         <h1>Down for maintenance</h1><p>{}</p>",
        html_escape(&text)
    );
    format!(
        "# Written by deployer: {service} is paused (deployer resume {service}).\n\
         server {{\n  listen {public_port};\n{server_name}  location / {{\n    \
         default_type text/html;\n    add_header Retry-After 60 always;\n    \
         return 503 {};\n  }}\n}}\n",
        nginx_string(&page)
    )
}

/// The lines of a service's server beyond its port: the `server_name` of
/// a service that shares its port by Host, and HTTPS.
fn server_name(proxy: &ProxySpec) -> String {
    let mut lines = match &proxy.host {
        Some(h) => format!("  server_name {h};\n"),
        None => String::new(),
    };
    if let Some(port) = proxy.tls_port {
        let (cert, key) = match &proxy.tls_files {
            Some((c, k)) => (c.clone(), k.clone()),
            // Relative to nginx's prefix, where `tls_script` makes them.
            None => {
                let n = proxy.cert_name();
                (format!("certs/{n}.crt"), format!("certs/{n}.key"))
            }
        };
        lines.push_str(&format!(
            "  listen {port} ssl;\n  ssl_certificate {cert};\n  ssl_certificate_key {key};\n"
        ));
    }
    lines
}

/// A shell script that makes sure the certificate a service's HTTPS
/// needs exists, when it comes from deployer's internal CA: the CA (made
/// once per host, `ca/ca.crt` under the proxy's directory) signs one per
/// name. `None` when the service has no HTTPS or brings its own files.
pub fn tls_script(dirs: &ProxyDirs, proxy: &ProxySpec) -> Option<String> {
    if proxy.tls_port.is_none() || proxy.tls_files.is_some() {
        return None;
    }
    let root = quote(&dirs.root.to_string_lossy());
    let name = quote(proxy.cert_name());
    Some(format!(
        r#"set -e
if ! command -v openssl >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq openssl >/dev/null
fi
cd {root}
mkdir -p ca certs
chmod 700 ca
key() {{ openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }}
if [ ! -f ca/ca.crt ]; then
  key ca/ca.key
  openssl req -x509 -new -key ca/ca.key -out ca/ca.crt -days 3650 -subj "/CN=deployer internal CA" 2>/dev/null
fi
n={name}
if [ ! -f "certs/$n.crt" ]; then
  key "certs/$n.key"
  openssl req -new -key "certs/$n.key" -out "certs/$n.csr" -subj "/CN=$n" 2>/dev/null
  printf 'subjectAltName=DNS:%s
extendedKeyUsage=serverAuth
' "$n" > "certs/$n.ext"
  openssl x509 -req -in "certs/$n.csr" -CA ca/ca.crt -CAkey ca/ca.key -CAcreateserial     -out "certs/$n.crt" -days 825 -extfile "certs/$n.ext" 2>/dev/null
  rm -f "certs/$n.csr" "certs/$n.ext"
fi"#
    ))
}

/// Text for HTML.
fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A string for nginx's configuration: double-quoted, with `"`, `\\`, `$`
/// and braces escaped so nothing in it is read as configuration.
fn nginx_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' | '\\' | '$' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Whether a service's file is the maintenance page.
pub fn is_paused(site: &str) -> bool {
    site.contains("is paused")
}

/// Finds nginx (it lives in /usr/sbin, not always on a login's PATH).
pub const FIND_NGINX: &str =
    r#"ngx=$(command -v nginx || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true)"#;

/// A shell script that makes sure the host's proxy runs: installs nginx
/// with apt when it is missing (as root, on Debian or Ubuntu; the
/// distribution's own nginx service is stopped, so it holds no port),
/// writes its configuration, and starts it (a systemd unit where systemd
/// runs, else nginx's own daemon) unless it runs already. Prints what it
/// did.
pub fn ensure_script(dirs: &ProxyDirs) -> String {
    let root = quote(&dirs.root.to_string_lossy());
    let conf = quote(&dirs.config().to_string_lossy());
    let pid = quote(&dirs.pid_file().to_string_lossy());
    let main = quote(&main_config(dirs));
    format!(
        r#"set -e
said=""
{FIND_NGINX}
if [ -z "$ngx" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt() {{ DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 "$@"; }}
    apt install -y -qq nginx >/dev/null 2>&1 || {{ apt update -qq >/dev/null 2>&1 && apt install -y -qq nginx >/dev/null; }}
    if [ -d /run/systemd/system ]; then systemctl disable --now nginx >/dev/null 2>&1 || true
    else /etc/init.d/nginx stop >/dev/null 2>&1 || true; fi
    said="nginx installed with apt; "
    {FIND_NGINX}
  else
    echo "nginx is not installed on this host, and deployer can only install it as root with apt-get" >&2
    exit 1
  fi
fi
running() {{ [ -f {pid} ] && kill -0 "$(cat {pid})" 2>/dev/null; }}
if running; then echo "${{said}}nginx runs"; exit 0; fi
mkdir -p {root}/sites {root}/logs
printf '%s' {main} > {conf}
"$ngx" -t -q -c {conf} -p {root}/
if [ -d /run/systemd/system ] && [ "$(id -u)" = 0 ]; then
  cat > /etc/systemd/system/deployer-proxy.service <<UNIT
[Unit]
Description=deployer's reverse proxy (nginx)
After=network-online.target
[Service]
Type=forking
PIDFile={pid}
ExecStart=$ngx -c {conf} -p {root}/
ExecReload=/bin/kill -HUP \$MAINPID
Restart=on-failure
[Install]
WantedBy=multi-user.target
UNIT
  systemctl daemon-reload
  systemctl enable --now deployer-proxy.service >/dev/null 2>&1
  how="a systemd unit"
else
  "$ngx" -c {conf} -p {root}/
  how="a daemon"
fi
i=0
until running; do
  i=$((i+1)); [ $i -lt 100 ] || {{ echo "nginx did not start; its log:" >&2; tail -5 {root}/logs/error.log >&2 || true; exit 1; }}
  sleep 0.1
done
echo "${{said}}nginx $("$ngx" -v 2>&1 | cut -d/ -f2) started as $how""#
    )
}

/// Reads a service's file (empty when it has none).
pub fn read_server(dirs: &ProxyDirs, service: &str) -> Cmd {
    Cmd::new("sh").args([
        "-c",
        &format!(
            "cat {} 2>/dev/null || true",
            quote(&dirs.site(service).to_string_lossy())
        ),
    ])
}

/// The upstream port a service's file names.
pub fn upstream_of(site: &str) -> Option<u16> {
    let rest = site.split("server 127.0.0.1:").nth(1)?;
    rest.split(';').next()?.trim().parse().ok()
}

/// A shell script that points a service's public port at `upstream`.
pub fn switch_script(dirs: &ProxyDirs, service: &str, proxy: &ProxySpec, upstream: u16) -> String {
    write_site_script(dirs, service, &site_config(service, proxy, upstream))
}

/// A shell script that prints the services whose files listen on `port`,
/// with their `server_name` (none when they take every host).
pub fn sharing_script(dirs: &ProxyDirs, port: u16) -> String {
    let sites = quote(&dirs.root.join("sites").to_string_lossy());
    format!(
        "cd {sites} 2>/dev/null || exit 0; for f in *.conf; do [ -f \"$f\" ] || continue; \
         grep -q '^  listen {port}\\( ssl\\)\\{{0,1\\}};$' \"$f\" || continue; \
         echo \"${{f%.conf}} $(sed -n 's/^  server_name \\(.*\\);$/\\1/p' \"$f\")\"; done"
    )
}

/// A shell script that writes a service's file: it is rewritten (and
/// checked; a bad one is put back), then nginx reloads gracefully, and the
/// script waits until no worker of the old configuration takes new
/// connections.
pub fn write_site_script(dirs: &ProxyDirs, service: &str, content: &str) -> String {
    let root = quote(&dirs.root.to_string_lossy());
    let conf = quote(&dirs.config().to_string_lossy());
    let pid = quote(&dirs.pid_file().to_string_lossy());
    let site = quote(&dirs.site(service).to_string_lossy());
    let content = quote(content);
    format!(
        r#"set -e
{FIND_NGINX}
mkdir -p {root}/sites
if [ -f {site} ]; then cp {site} {site}.old; else rm -f {site}.old; fi
printf '%s' {content} > {site}.new
mv {site}.new {site}
if ! err=$("$ngx" -t -q -c {conf} -p {root}/ 2>&1); then
  if [ -f {site}.old ]; then mv {site}.old {site}; else rm -f {site}; fi
  echo "$err" >&2; exit 1
fi
rm -f {site}.old
m=$(cat {pid})
# The master's workers that still take connections.
workers() {{
  for f in $(grep -l "^PPid:[[:space:]]*$m\$" /proc/[0-9]*/status 2>/dev/null); do
    p=${{f#/proc/}}; p=${{p%/status}}
    case "$(tr '\0' ' ' < /proc/$p/cmdline 2>/dev/null)" in
      *"shutting down"*) ;;
      *worker*) echo "$p" ;;
    esac
  done
}}
old=" $(echo $(workers)) "
kill -HUP "$m"
i=0
while :; do
  now=$(workers); stale=""
  for p in $now; do case "$old" in *" $p "*) stale=1 ;; esac; done
  [ -z "$stale" ] && [ -n "$now" ] && break
  i=$((i+1)); [ $i -lt 400 ] || {{ echo "nginx did not take the new configuration" >&2; exit 1; }}
  sleep 0.025
done"#
    )
}

/// A shell script that stops a release after `drain_secs` (its in-flight
/// requests finish), in the background, unless it became current again
/// meanwhile (a rollback switched back to it). Its deadline is written to
/// `run/RELEASE.drain` first, so when this drainer dies (the host
/// rebooted, someone killed it) the next deployer command stops the
/// release instead; the drainer removes it when done.
pub fn drain_script(service_root: &Path, release: &str, drain_secs: u64, stop: &str) -> String {
    let current = quote(&service_root.join("current").to_string_lossy());
    let target = quote(&format!("releases/{release}"));
    let record = quote(
        &service_root
            .join("run")
            .join(format!("{release}.drain"))
            .to_string_lossy(),
    );
    let inner = format!(
        "sleep {drain_secs}; [ \"$(readlink {current})\" = {target} ] || {{ {stop}; }}; rm -f {record}"
    );
    // The record in the foreground (a failure fails the step), only the
    // drainer in the background.
    format!(
        "mkdir -p \"$(dirname {record})\" || exit 1\n\
         echo $(( $(date +%s) + {drain_secs} )) > {record}.tmp && mv {record}.tmp {record} || exit 1\n\
         setsid nohup sh -c {} >/dev/null 2>&1 </dev/null &",
        quote(&inner)
    )
}

/// Lists a service's drains on a host: the host's time first (`now
/// SECONDS`), then `RELEASE UNTIL` per line.
pub fn drains_script(service_root: &Path) -> String {
    let run = quote(&service_root.join("run").to_string_lossy());
    format!(
        "echo now $(date +%s); cd {run} 2>/dev/null || exit 0; for f in *.drain; do \
         [ -f \"$f\" ] || continue; echo \"${{f%.drain}} $(cat \"$f\")\"; done"
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
    fn a_services_file_names_its_ports_and_drains_read_as_sh_reads_them() {
        let spec = ProxySpec {
            public_port: 8080,
            drain_secs: 10,
            private_ports: (20000, 29999),
            host: Some("api.example.com".into()),
            tls_port: Some(8443),
            tls_files: None,
        };
        let site = site_config("web", &spec, 20001);
        assert!(site.contains("server_name api.example.com;"), "{site}");
        assert!(site.contains("listen 8443 ssl;"), "{site}");
        assert!(
            site.contains("ssl_certificate certs/api.example.com.crt;"),
            "{site}"
        );
        let tls = tls_script(&ProxyDirs::new(Path::new("/srv/deployer")), &spec).unwrap();
        assert!(tls.contains("n=api.example.com"), "{tls}");
        assert!(site.contains("listen 8080;"), "{site}");
        assert_eq!(upstream_of(&site), Some(20001));
        assert_eq!(upstream_of(""), None);
        let dirs = ProxyDirs::new(Path::new("/srv/deployer"));
        let s = switch_script(&dirs, "web", &spec, 20002);
        assert!(s.contains("server 127.0.0.1:20002;"), "{s}");
        assert!(s.contains("kill -HUP"), "{s}");
        let drain = drain_script(Path::new("/srv/deployer/web"), "r1", 10, "kill 1");
        assert!(drain.contains("\nsetsid nohup sh -c "), "{drain}");
        assert!(
            drain.trim_end().ends_with('&'),
            "only the drainer runs in the background"
        );
        assert!(drain.contains("sleep 10"), "{drain}");
        let p = private_port("r1", (20000, 20009), &[], |_| true).unwrap();
        assert!((20000..=20009).contains(&p));
        assert_eq!(private_port("r1", (20000, 20000), &[20000], |_| true), None);
        let other = private_port("r1", (20000, 20009), &[p], |_| true).unwrap();
        assert_ne!(other, p);
    }
}
