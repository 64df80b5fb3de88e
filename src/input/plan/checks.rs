//! Checks of manifest sections that would otherwise reach a shell or a
//! unit file: backups, smoke checks, the systemd user.

use crate::input::config::Manifest;
use crate::support::error::Failure;

/// The manifest's `[backup]`: dump names are file names, paths stay inside
/// the service's directory.
pub(super) fn backup_spec(
    manifest: &Manifest,
) -> Result<Option<crate::model::BackupSpec>, Failure> {
    let Some(b) = &manifest.backup else {
        return Ok(None);
    };
    for c in &b.commands {
        let ok = !c.name.is_empty()
            && c.name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_');
        if !ok {
            return Err(Failure::invalid(format!(
                "backup command name {:?} must be letters, digits, '-' or '_'",
                c.name
            )));
        }
    }
    if let Some(p) = b
        .paths
        .iter()
        .find(|p| p.is_empty() || p.starts_with('/') || p.split('/').any(|c| c == ".."))
    {
        return Err(Failure::invalid(format!(
            "backup path {p:?} must be relative to the service's directory, without '..'"
        )));
    }
    Ok(Some(b.clone()))
}

/// The manifest's smoke checks; each path must be a path.
pub(super) fn smoke_checks(
    manifest: &Manifest,
) -> Result<Vec<crate::input::config::SmokeCheck>, Failure> {
    for check in &manifest.smoke {
        if !check.path.starts_with('/') || check.path.chars().any(char::is_whitespace) {
            return Err(Failure::invalid(format!(
                "smoke check path '{}' must start with '/' and contain no spaces",
                check.path
            )));
        }
    }
    Ok(manifest.smoke.clone())
}

/// The user a systemd unit runs as: a plain user name, so it cannot carry
/// anything else into the unit file.
pub(super) fn systemd_user(manifest: &Manifest) -> Result<Option<String>, Failure> {
    let Some(user) = &manifest.systemd.user else {
        return Ok(None);
    };
    let ok = (1..=32).contains(&user.len())
        && user.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && user
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !ok {
        return Err(Failure::invalid(format!(
            "[systemd] user {user:?} is not a user name (lowercase letters, digits, '_', '-')"
        )));
    }
    Ok(Some(user.clone()))
}

/// The manifest's `[limits]` memory and CPUs.
pub(super) fn limits(manifest: &Manifest) -> Result<crate::model::Limits, Failure> {
    let l = &manifest.limits;
    let memory_bytes = match &l.memory {
        Some(m) => Some(
            crate::model::Limits::parse_memory(m)
                .map_err(|e| Failure::invalid(format!("limits.memory: {e}")))?,
        ),
        None => None,
    };
    if let Some(c) = l.cpus
        && !(c > 0.0 && c <= 1024.0)
    {
        return Err(Failure::invalid(format!(
            "limits.cpus {c} must be more than 0 and at most 1024"
        )));
    }
    Ok(crate::model::Limits {
        memory_bytes,
        cpus: l.cpus,
    })
}

/// Longest job time limit: a day.
const MAX_JOB_TIMEOUT_SECS: u64 = 86_400;

/// A job's time limit: `[limits] job_timeout_secs`, else the config's
/// `defaults.job_timeout_secs` (DEPLOYMENT_TIMEOUT), else 10 minutes.
pub fn job_timeout(
    manifest: Option<&Manifest>,
    config: &crate::input::config::DeployerConfig,
) -> Result<std::time::Duration, Failure> {
    let secs = manifest
        .and_then(|m| m.limits.job_timeout_secs)
        .or(config.defaults.job_timeout_secs)
        .unwrap_or(600);
    if secs == 0 || secs > MAX_JOB_TIMEOUT_SECS {
        return Err(Failure::invalid(format!(
            "job_timeout_secs {secs} must be 1 to {MAX_JOB_TIMEOUT_SECS}"
        )));
    }
    Ok(std::time::Duration::from_secs(secs))
}

/// The service's port (the flag's, the manifest's, or the host side of
/// `[docker] ports`), and its container's port when that is another.
pub(super) fn service_port(
    requested: Option<u16>,
    manifest: &Manifest,
) -> Result<(u16, Option<u16>), Failure> {
    let ports = docker_ports(manifest)?;
    let port = requested
        .or(manifest.port)
        .or(ports.map(|p| p.0))
        .ok_or_else(|| {
            Failure::invalid_field(
                "service_port",
                "no port: give --port or set `port` in service.toml",
            )
        })?;
    if port == 0 {
        return Err(Failure::invalid_field(
            "service_port",
            "port 0 is not a valid service port (1-65535)",
        ));
    }
    if let Some((host, inner)) = ports
        && host != port
    {
        return Err(Failure::invalid_field(
            "service_port",
            format!(
                "port {port} and docker.ports \"{host}:{inner}\" disagree: \
                 the host port is the service's port"
            ),
        ));
    }
    Ok((port, ports.map(|p| p.1)))
}

/// `[docker] ports = "HOST:CONTAINER"`.
fn docker_ports(manifest: &Manifest) -> Result<Option<(u16, u16)>, Failure> {
    let Some(p) = &manifest.docker.ports else {
        return Ok(None);
    };
    let bad = || {
        Failure::invalid(format!(
            "docker.ports '{p}' must be HOST:CONTAINER, two ports (1-65535), as \"8080:80\""
        ))
    };
    let (h, c) = p.split_once(':').ok_or_else(bad)?;
    let h: u16 = h.trim().parse().map_err(|_| bad())?;
    let c: u16 = c.trim().parse().map_err(|_| bad())?;
    if h == 0 || c == 0 {
        return Err(bad());
    }
    Ok(Some((h, c)))
}

/// A Python service (process and systemd methods; the docker method's
/// Dockerfile installs what it needs): recorded in the spec, and with no
/// start command, its ASGI app started with uvicorn.
pub(super) fn python_service(
    source: &std::path::Path,
    manifest: &Manifest,
    method: crate::input::config::Method,
    spec: &mut crate::model::RunSpec,
) -> Result<(), Failure> {
    if method == crate::input::config::Method::Docker {
        return Ok(());
    }
    let Some(python) = crate::hosting::python::detect(source) else {
        return Ok(());
    };
    spec.python = Some(python);
    if spec.start.is_some() {
        return Ok(());
    }
    let word = |s: &str, extra: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
    };
    let asgi = match &manifest.python.asgi {
        Some(a) if word(a, "_.:") && a.contains(':') => Some(a.clone()),
        Some(a) => {
            return Err(Failure::invalid(format!(
                "python.asgi '{a}' must be MODULE:ATTRIBUTE, as \"main:app\""
            )));
        }
        None => crate::hosting::python::asgi_app(source),
    };
    let bind = manifest.python.bind.as_deref().unwrap_or("127.0.0.1");
    if !word(bind, ".:-") {
        return Err(Failure::invalid(format!(
            "python.bind '{bind}' must be an address, as \"127.0.0.1\" or \"0.0.0.0\""
        )));
    }
    spec.start = asgi.map(|a| crate::hosting::python::uvicorn(&a, bind));
    Ok(())
}

/// `[proxy] tls_certificate` and `tls_key`: both or neither, absolute
/// paths on the server.
fn tls_files(
    config: &crate::input::config::ProxyConfig,
) -> Result<Option<(String, String)>, Failure> {
    let safe = |p: &str| {
        p.starts_with('/')
            && !p
                .chars()
                .any(|c| c.is_whitespace() || ";{}'\"$\\".contains(c))
    };
    match (&config.tls_certificate, &config.tls_key) {
        (None, None) => Ok(None),
        (Some(c), Some(k)) if safe(c) && safe(k) => Ok(Some((c.clone(), k.clone()))),
        _ => Err(Failure::invalid(
            "proxy.tls_certificate and proxy.tls_key go together, as absolute paths on the server",
        )),
    }
}

/// A host name for `[proxy] host`: letters, digits, dots and dashes.
fn host_name(h: &str) -> Result<String, Failure> {
    let h = h.trim().to_ascii_lowercase();
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        && !h.starts_with(['.', '-']);
    if ok {
        Ok(h)
    } else {
        Err(Failure::invalid(format!(
            "proxy.host '{h}' must be a host name, as \"api.example.com\""
        )))
    }
}

/// `[proxy]` (or `--proxy-port`): the public port, the drain, the range
/// of private ports.
pub(super) fn proxy_spec(
    req: &crate::input::plan::DeployRequest,
    manifest: &Manifest,
) -> Result<Option<crate::model::ProxySpec>, Failure> {
    let config = manifest.proxy.clone().unwrap_or_default();
    let Some(public_port) = req.proxy_port.or(config.port) else {
        if manifest.proxy.is_some() {
            return Err(Failure::invalid(
                "[proxy] needs `port`, the public port (or pass --proxy-port)",
            ));
        }
        return Ok(None);
    };
    if public_port == 0 {
        return Err(Failure::invalid("proxy port 0 is not a port (1-65535)"));
    }
    let drain_secs = config.drain_secs.unwrap_or(10);
    if drain_secs > 3600 {
        return Err(Failure::invalid("proxy.drain_secs is at most 3600"));
    }
    let range = config.private_ports.as_deref().unwrap_or("20000-29999");
    let bad = || {
        Failure::invalid(format!(
            "proxy.private_ports '{range}' must be LOW-HIGH, as \"20000-29999\""
        ))
    };
    let (lo, hi) = range.split_once('-').ok_or_else(bad)?;
    let (lo, hi): (u16, u16) = (
        lo.trim().parse().map_err(|_| bad())?,
        hi.trim().parse().map_err(|_| bad())?,
    );
    if lo == 0 || lo > hi || (lo..=hi).contains(&public_port) {
        return Err(bad());
    }
    Ok(Some(crate::model::ProxySpec {
        public_port,
        drain_secs,
        private_ports: (lo, hi),
        host: match &config.host {
            Some(h) => Some(host_name(h)?),
            None => None,
        },
        tls_port: match config.tls_port {
            Some(p) if p == 0 || p == public_port || (lo..=hi).contains(&p) => {
                return Err(Failure::invalid(format!(
                    "proxy.tls_port {p} must be a port of its own"
                )));
            }
            p => p,
        },
        tls_files: tls_files(&config)?,
    }))
}

/// The service's name: given, else the manifest's, else the directory's
/// (as the seed's scripts do).
pub(super) fn service_name(
    req: &super::DeployRequest,
    manifest: &Manifest,
    source: &std::path::Path,
) -> Result<String, Failure> {
    let manifest_file = source.join(crate::input::config::MANIFEST_FILE);
    let dir_name = source.file_name().map(|n| n.to_string_lossy().into_owned());
    let name = req
        .service_name
        .clone()
        .or(manifest.name.clone())
        .or(dir_name)
        .ok_or_else(|| {
            Failure::invalid_field(
                "service_name",
                format!(
                    "no service name: give --name or set `name` in {}",
                    manifest_file.display()
                ),
            )
        })?;
    super::validate_name(&name).map_err(|f| Failure {
        message: format!(
            "{} (give --name, or set `name` in {})",
            f.message,
            manifest_file.display()
        ),
        ..f
    })?;
    Ok(name)
}
