//! Who may use the API, checked before any handler runs.
//!
//! - Every mutating request needs `Authorization: Bearer TOKEN`. There is
//!   always a token: the configured one (at least 32 characters), or one
//!   generated at first start and kept mode 0600 in the state directory.
//! - Browsers cannot be turned against the server: a mutating request must
//!   say `Content-Type: application/json` (a form or `text/plain` post from
//!   a web page cannot), its `Host` must be an address of the server,
//!   `localhost` or a configured name (DNS rebinding), and an `Origin`, when
//!   sent, must be the server itself.

use super::{ApiError, AppState, Shared};
use crate::support::error::Failure;
use crate::support::secret::Secret;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The shortest token accepted.
pub const MIN_TOKEN_LEN: usize = 32;

/// The file a generated token is kept in, inside the state directory.
pub const TOKEN_FILE: &str = "api-token";

/// Where the server's token came from.
#[derive(Clone, Debug, PartialEq)]
pub enum TokenSource {
    /// DEPLOYER_API_TOKEN or `api.token`.
    Configured,
    /// Generated now, written to this file.
    Generated(PathBuf),
    /// Generated at an earlier start, read from this file.
    Stored(PathBuf),
}

/// The server's token: the configured one, refused when short; else the
/// one kept in the state directory, made on first start.
pub fn api_token(
    configured: Option<Secret>,
    state_dir: &Path,
) -> Result<(Secret, TokenSource), Failure> {
    if let Some(token) = configured {
        if token.expose().trim().len() < MIN_TOKEN_LEN {
            return Err(Failure::invalid(format!(
                "the API token (DEPLOYER_API_TOKEN or api.token) is shorter than {MIN_TOKEN_LEN} \
                 characters; use a long random one (openssl rand -hex 32), or set none and let \
                 deployer make one"
            )));
        }
        return Ok((token, TokenSource::Configured));
    }
    let path = state_dir.join(TOKEN_FILE);
    if let Some(token) = read_token_file(&path)? {
        return Ok((token, TokenSource::Stored(path)));
    }
    let token = random_token()?;
    crate::support::private_dir(state_dir)
        .map_err(|e| Failure::internal(format!("creating {}: {e}", state_dir.display())))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Failure::internal(format!("writing {}: {e}", path.display())))?;
    writeln!(file, "{}", token.expose())
        .and_then(|_| file.sync_all())
        .map_err(|e| Failure::internal(format!("writing {}: {e}", path.display())))?;
    Ok((token, TokenSource::Generated(path)))
}

/// The token kept in a state directory, for `deploy --server` on the same
/// machine; none when there is no such file.
pub fn read_token_file(path: &Path) -> Result<Option<Secret>, Failure> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().len() >= MIN_TOKEN_LEN => Ok(Some(Secret::new(text.trim()))),
        Ok(_) => Err(Failure::invalid(format!(
            "{} holds no usable token; remove it to have a new one made",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Failure::internal(format!(
            "reading {}: {e}",
            path.display()
        ))),
    }
}

/// 32 random bytes from the kernel, as 64 hex characters.
pub(super) fn random_token() -> Result<Secret, Failure> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| Failure::internal(format!("reading /dev/urandom: {e}")))?;
    Ok(Secret::new(
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>(),
    ))
}

/// Compares two byte strings in time that depends only on their lengths.
pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the request carries the server's token (`Bearer`, in any case).
fn authorized(state: &AppState, headers: &HeaderMap) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then_some(token.trim())
        })
        .unwrap_or("");
    constant_time_eq(given.as_bytes(), state.token.expose().as_bytes())
}

/// The host part of a `Host` or `Origin` authority (`[::1]:8007` → `::1`).
fn host_of(authority: &str) -> &str {
    let authority = authority.trim();
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    }
}

/// Whether `Host` names this server: an IP address of it (any, when it
/// listens on all addresses), `localhost`, or a configured name.
pub(super) fn host_allowed(state: &AppState, host: &str) -> bool {
    let host = host_of(host).to_ascii_lowercase();
    let bound = state.options.addr.ip();
    if host == "localhost" || state.options.allowed_hosts.contains(&host) {
        return true;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) if bound.is_unspecified() => !ip.is_unspecified(),
        Ok(ip) => ip == bound || (bound.is_loopback() && ip.is_loopback()),
        Err(_) => false,
    }
}

/// Whether an `Origin` is the server itself (same host and port as `Host`).
pub(super) fn same_origin(origin: &str, host: &str) -> bool {
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|authority| authority.eq_ignore_ascii_case(host.trim()))
}

fn refuse(status: StatusCode, message: &str) -> Response {
    ApiError::new(status, message).into_response()
}

/// Checks every request before it reaches a handler.
pub async fn guard(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !host_allowed(&state, host) {
        return refuse(
            StatusCode::FORBIDDEN,
            "this server does not answer to that Host name (add it with --allow-host)",
        );
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("null");
        if !same_origin(origin, host) {
            return refuse(StatusCode::FORBIDDEN, "cross-origin requests are refused");
        }
    }
    let mutating = req.method() != Method::GET && req.method() != Method::HEAD;
    if (mutating || state.options.read_requires_token) && !authorized(&state, headers) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer TOKEN)",
        );
    }
    if req.method() == Method::POST {
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "requests must be JSON (Content-Type: application/json)",
            );
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_origin_rules() {
        assert_eq!(host_of("127.0.0.1:8007"), "127.0.0.1");
        assert_eq!(host_of("[::1]:8007"), "::1");
        assert_eq!(host_of("evil.test"), "evil.test");
        assert!(same_origin("http://127.0.0.1:8007", "127.0.0.1:8007"));
        assert!(!same_origin("https://evil.test", "127.0.0.1:8007"));
        assert!(!same_origin("null", "127.0.0.1:8007"));
    }

    #[test]
    fn short_tokens_are_refused_and_a_missing_one_is_made_once() {
        let dir = tempfile::tempdir().unwrap();
        for short in ["", "   ", "unit-token"] {
            let err = api_token(Some(Secret::new(short)), dir.path()).unwrap_err();
            assert!(err.message.contains("shorter than 32"), "{}", err.message);
        }
        let (made, source) = api_token(None, dir.path()).unwrap();
        let path = dir.path().join(TOKEN_FILE);
        assert_eq!(source, TokenSource::Generated(path.clone()));
        assert_eq!(made.expose().len(), 64);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, source) = api_token(None, dir.path()).unwrap();
        assert_eq!(source, TokenSource::Stored(path));
        assert_eq!(again.expose(), made.expose());
    }
}
