//! The image of a swarm release, built on the manager: the service's own
//! Dockerfile, then a static busybox under `/.deployer/` and a
//! `HEALTHCHECK` from `[health]`; tagged `NAME:RELEASE` and, with a
//! registry, `REGISTRY/NAME:RELEASE`, pushed there for the other nodes.

use super::{LABEL_RELEASE, LABEL_SERVICE, ReleaseCtx, spec};
use crate::support::cmd::quote;
use std::time::Duration;

pub const BUILD_TIMEOUT: Duration = Duration::from_secs(900);

/// The image the service's tasks run.
pub fn registry_image(ctx: &ReleaseCtx) -> String {
    match &spec(ctx).registry {
        Some(r) => format!("{r}/{}:{}", ctx.service, ctx.release),
        None => crate::hosting::runtime::docker::image(ctx),
    }
}

/// Finds a static busybox, installing Debian's busybox-static as root when
/// there is none; sets `$bb`.
pub const FIND_BUSYBOX: &str = r#"bb=""
static_bb() { for b in /bin/busybox /usr/bin/busybox; do
  [ -x "$b" ] && ! ldd "$b" >/dev/null 2>&1 && { bb=$b; return 0; }; done; return 1; }
if ! static_bb; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt() { DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 "$@"; }
    apt install -y -qq busybox-static >/dev/null 2>&1 || { apt update -qq >/dev/null 2>&1 && apt install -y -qq busybox-static >/dev/null; }
  fi
  static_bb || { echo "the swarm method needs a static busybox on the manager (Debian: apt-get install busybox-static)" >&2; exit 1; }
fi"#;

/// The lines deployer adds to the service's Dockerfile.
fn added_lines(ctx: &ReleaseCtx) -> String {
    let h = &ctx.spec.health;
    let url = format!("http://127.0.0.1:{}{}", ctx.inner_port(), h.path);
    // No `-T`: busybox 1.35's wget crashes with it; the check's own
    // --timeout bounds the probe.
    let probe =
        serde_json::to_string(&["/.deployer/busybox", "wget", "-q", "-O", "/dev/null", &url])
            .unwrap_or_default();
    format!(
        "\n# Added by deployer for the swarm method.\n\
         COPY .deployer/busybox /.deployer/busybox\n\
         HEALTHCHECK --interval=1s --timeout=3s --start-period={}s --retries={} CMD {probe}\n",
        h.timeout_secs.max(1),
        h.retries.max(1),
    )
}

/// Builds (and pushes) the release's image on the manager.
pub fn build_script(ctx: &ReleaseCtx) -> String {
    let dir = ctx.dir();
    let q = |p: &std::path::Path| quote(&p.to_string_lossy());
    let image = registry_image(ctx);
    let local = crate::hosting::runtime::docker::image(ctx);
    let push = match spec(ctx).registry {
        Some(_) => format!("docker push -q {} >/dev/null", quote(&image)),
        None => String::new(),
    };
    format!(
        r#"set -e
{FIND_BUSYBOX}
cd {dir}
mkdir -p .deployer
cp "$bb" .deployer/busybox
cat {dockerfile} > .deployer/Dockerfile
printf '%s' {added} >> .deployer/Dockerfile
docker build --quiet --tag {local} --tag {image} --label {LABEL_SERVICE}={service} --label {LABEL_RELEASE}={release} --file .deployer/Dockerfile . >/dev/null
{push}"#,
        dir = q(&dir),
        dockerfile = q(&dir.join(&ctx.spec.dockerfile)),
        added = quote(&added_lines(ctx)),
        local = quote(&local),
        image = quote(&image),
        service = quote(&ctx.service),
        release = quote(&ctx.release),
    )
}
