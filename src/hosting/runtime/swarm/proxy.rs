//! deployer's proxy in front of a swarm service (`publish = "proxy"`):
//! nginx in a container on the manager, attached to the service's overlay
//! network, publishing the service's port on the host. It finds the tasks
//! through Swarm's DNS (`tasks.NAME`, re-resolved every second); a task is
//! there only once its health check passed, and a request that finds a
//! task gone is retried on another. The image is made on the manager from
//! its own nginx binary and libraries (no image is pulled).

use super::{CMD_TIMEOUT, ReleaseCtx, RuntimeError, SwarmRuntime, spec};
use crate::support::cmd::{Cmd, quote};

/// The proxy container of a service.
pub fn container(service: &str) -> String {
    format!("{service}-proxy")
}

/// The proxy's nginx.conf.
pub fn config(ctx: &ReleaseCtx) -> String {
    format!(
        r#"worker_processes 1;
error_log stderr warn;
pid /tmp/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path /tmp/body;
  proxy_temp_path /tmp/proxy;
  resolver 127.0.0.11 valid=1s ipv6=off;
  resolver_timeout 2s;
  server {{
    listen 80;
    location / {{
      set $tasks tasks.{service};
      proxy_pass http://$tasks:{port};
      proxy_http_version 1.1;
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_connect_timeout 1s;
      proxy_next_upstream error timeout http_502 http_503;
      proxy_next_upstream_tries 5;
    }}
  }}
}}
"#,
        service = ctx.service,
        port = ctx.inner_port(),
    )
}

/// Makes the proxy image from the manager's nginx unless it exists (nginx
/// installed with apt as root when missing); prints its tag.
const IMAGE_SCRIPT: &str = r#"set -e
ngx=$(command -v nginx || true); [ -n "$ngx" ] || { [ -x /usr/sbin/nginx ] && ngx=/usr/sbin/nginx; }
if [ -z "$ngx" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt() { DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 "$@"; }
    apt install -y -qq nginx-light >/dev/null 2>&1 || { apt update -qq >/dev/null 2>&1 && apt install -y -qq nginx-light >/dev/null; }
    if [ -d /run/systemd/system ]; then systemctl disable --now nginx >/dev/null 2>&1 || true
    else /etc/init.d/nginx stop >/dev/null 2>&1 || true; fi
    ngx=/usr/sbin/nginx
  else
    echo "the swarm proxy needs nginx on the manager (Debian: apt-get install nginx-light)" >&2; exit 1
  fi
fi
tag="deployer-proxy:$(sha256sum "$ngx" | cut -c1-12)"
if docker image inspect "$tag" >/dev/null 2>&1; then echo "$tag"; exit 0; fi
d=$(mktemp -d); trap 'rm -rf "$d"' EXIT
mkdir -p "$d/root/usr/sbin" "$d/root/etc/nginx" "$d/root/tmp" "$d/root/var/lib/nginx" "$d/root/var/log/nginx" "$d/root/run"
cp "$ngx" "$d/root/usr/sbin/nginx"
for lib in $(ldd "$ngx" | grep -o '/[^ ]*'); do mkdir -p "$d/root$(dirname "$lib")"; cp -L "$lib" "$d/root$lib"; done
printf 'root:x:0:0:root:/:/nonexistent\nnobody:x:65534:65534:nobody:/nonexistent:/nonexistent\n' > "$d/root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$d/root/etc/group"
printf 'FROM scratch\nCOPY root/ /\nSTOPSIGNAL SIGQUIT\nENTRYPOINT ["/usr/sbin/nginx", "-g", "daemon off;"]\n' > "$d/Dockerfile"
docker build --quiet --tag "$tag" "$d" >/dev/null
echo "$tag""#;

/// Runs the proxy container unless it runs already with this config and
/// image: writes the config, then (re)creates the container.
fn run_script(ctx: &ReleaseCtx, conf_path: &str, image: &str) -> String {
    let name = container(&ctx.service);
    format!(
        r#"set -e
want="$(sha256sum {conf} | cut -c1-12) {image} true"
have=$(docker inspect --format '{{{{index .Config.Labels "deployer.proxy-config"}}}} {{{{.Config.Image}}}} {{{{.State.Running}}}}' {name} 2>/dev/null || true)
if [ "$have" = "$want" ]; then echo "proxy {name} runs"; exit 0; fi
docker rm --force {name} >/dev/null 2>&1 || true
docker run --detach --name {name} --restart unless-stopped \
  --label deployer.swarm-proxy={service} --label deployer.proxy-config=$(sha256sum {conf} | cut -c1-12) \
  --network {net} --publish {port}:80 \
  --volume {conf}:/etc/nginx/nginx.conf:ro {image} >/dev/null
echo "proxy {name} started on port {port}""#,
        conf = quote(conf_path),
        image = quote(image),
        name = quote(&name),
        service = quote(&ctx.service),
        net = quote(&spec(ctx).network),
        port = ctx.spec.port,
    )
}

impl SwarmRuntime {
    /// Makes sure the proxy runs in front of the service on the manager.
    pub(super) async fn ensure_proxy(&self, ctx: &ReleaseCtx) -> Result<String, RuntimeError> {
        let sh = |script: &str| Cmd::new("sh").args(["-c", script]);
        let out = self
            .host
            .run(&sh(IMAGE_SCRIPT), super::build::BUILD_TIMEOUT)
            .await?;
        if !out.success() {
            return Err(RuntimeError::Release(format!(
                "making the proxy image on the manager: {}",
                out.tail(5)
            )));
        }
        let image = out.stdout.trim().to_string();
        let conf = ctx.dirs.root.join("swarm-proxy.conf");
        let conf = conf.to_string_lossy();
        self.host
            .write_file(&conf, config(ctx).as_bytes(), 0o644)
            .await?;
        let out = self
            .host
            .run(&sh(&run_script(ctx, &conf, &image)), CMD_TIMEOUT)
            .await?;
        if !out.success() {
            return Err(RuntimeError::Release(format!(
                "starting the proxy on port {}: {}",
                ctx.spec.port,
                out.tail(3)
            )));
        }
        Ok(out.stdout.trim().to_string())
    }

    pub(super) async fn remove_proxy(&self, service: &str) {
        let rm = Cmd::new("docker").args(["rm", "--force", &container(service)]);
        let _ = self.host.run(&rm, CMD_TIMEOUT).await;
    }
}
