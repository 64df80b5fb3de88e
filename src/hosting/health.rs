//! Verify Health: poll a service's health URL from the moment it starts until
//! it answers 2xx, its process exits, the health budget runs out, or it
//! keeps answering 4xx (a wrong path no wait will fix). A service warming
//! up (refused, 5xx, slow) is waited for. Polling backs off from 50 ms to at most 100 ms, so a service that
//! becomes healthy is seen within about 100 ms.

use std::future::Future;
use std::time::{Duration, Instant};

/// Whether the started process or container is still there.
#[derive(Clone, Debug, PartialEq)]
pub enum Liveness {
    Alive,
    /// It exited: how (exit code), and the last lines of its log.
    Exited {
        how: String,
        log_tail: String,
    },
}

/// The health rule for one check run.
#[derive(Clone, Debug)]
pub struct HealthCheck {
    pub url: String,
    pub timeout: Duration,
    /// Consecutive 4xx answers (a wrong health path, say) that fail the
    /// check before the deadline, beyond the first. Refused connections,
    /// timeouts and 5xx only count against the deadline: the service may
    /// still be warming up.
    pub retries: u32,
}

/// Why a check did not pass.
#[derive(Clone, Debug, PartialEq)]
pub enum Unhealthy {
    /// The process or container exited before it became healthy.
    Exited(String),
    /// It kept answering badly, or not at all, until the rule gave up.
    Failed(String),
}

impl std::fmt::Display for Unhealthy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unhealthy::Exited(s) | Unhealthy::Failed(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for Unhealthy {}

/// A passed check.
#[derive(Clone, Debug)]
pub struct Healthy {
    pub after: Duration,
    pub checks: u32,
}

/// Where health is checked from.
#[derive(Clone, Copy)]
pub enum Probe<'a> {
    /// From deployer's machine, over HTTP.
    Http(&'a reqwest::Client),
    /// From the target host itself, with `curl` over SSH: for a port that a
    /// firewall keeps from deployer's machine.
    OnHost(&'a crate::hosting::host::Host),
}

enum Answer {
    Status(u16),
    NoAnswer(String),
}

impl Probe<'_> {
    async fn get(&self, url: &str, timeout: Duration) -> Answer {
        match self {
            Probe::Http(client) => match client.get(url).timeout(timeout).send().await {
                Ok(resp) => Answer::Status(resp.status().as_u16()),
                Err(e) => Answer::NoAnswer(describe(&e)),
            },
            Probe::OnHost(host) => {
                use crate::support::cmd::Transport;
                let secs = format!("{:.1}", timeout.as_secs_f64());
                let cmd = crate::support::cmd::Cmd::new("curl").args([
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    &secs,
                    url,
                ]);
                match host.exec(&cmd, timeout + Duration::from_secs(10)).await {
                    Ok(out) => match out.stdout.trim().parse::<u16>() {
                        Ok(code) if code > 0 => Answer::Status(code),
                        _ => Answer::NoAnswer(match out.code {
                            Some(7) => "connection refused".to_string(),
                            Some(28) => "timed out".to_string(),
                            Some(127) => format!("curl is not installed on {}", host.name()),
                            _ => format!("curl on {} failed: {}", host.name(), out.tail(1)),
                        }),
                    },
                    Err(e) => Answer::NoAnswer(e.to_string()),
                }
            }
        }
    }
}

fn status_text(code: u16) -> String {
    match reqwest::StatusCode::from_u16(code) {
        Ok(s) => s.to_string(),
        Err(_) => code.to_string(),
    }
}

const FIRST_INTERVAL: Duration = Duration::from_millis(50);
const MAX_INTERVAL: Duration = Duration::from_millis(100);

impl HealthCheck {
    /// Polls until healthy. `liveness` is asked between polls; an exited
    /// service fails the check at once.
    pub async fn wait<F, Fut>(
        &self,
        probe: Probe<'_>,
        mut liveness: F,
    ) -> Result<Healthy, Unhealthy>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Liveness>,
    {
        let start = Instant::now();
        let deadline = start + self.timeout;
        let mut interval = FIRST_INTERVAL;
        let mut checks = 0u32;
        let mut consecutive = 0u32;
        let mut last;
        loop {
            checks += 1;
            let per_request = deadline
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(200), Duration::from_secs(5));
            match probe.get(&self.url, per_request).await {
                Answer::Status(code) if (200..300).contains(&code) => {
                    return Ok(Healthy {
                        after: start.elapsed(),
                        checks,
                    });
                }
                // A service warming up (5xx) is waited for; an answer no
                // later poll will change (404: a wrong health path) fails
                // after `retries` in a row.
                Answer::Status(code) if (400..500).contains(&code) => {
                    consecutive += 1;
                    last = format!("answered {}", status_text(code));
                }
                Answer::Status(code) => {
                    consecutive = 0;
                    last = format!("answered {}", status_text(code));
                }
                Answer::NoAnswer(why) => {
                    consecutive = 0;
                    last = why;
                }
            }
            if consecutive > self.retries {
                return Err(Unhealthy::Failed(format!(
                    "{} unhealthy after {consecutive} consecutive checks: {last}",
                    self.url
                )));
            }
            if let Liveness::Exited { how, log_tail } = liveness().await {
                let mut msg = format!("the service {how} before it became healthy");
                if !log_tail.is_empty() {
                    msg.push_str(&format!("; last log lines:\n{log_tail}"));
                }
                return Err(Unhealthy::Exited(msg));
            }
            if Instant::now() + interval >= deadline {
                return Err(Unhealthy::Failed(format!(
                    "{} not healthy within {} s ({checks} checks): {last}",
                    self.url,
                    self.timeout.as_secs()
                )));
            }
            tokio::time::sleep(interval).await;
            interval = (interval * 3 / 2).min(MAX_INTERVAL);
        }
    }
}

pub fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "connection refused".to_string()
    } else {
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            msg = format!("{msg}: {s}");
            source = s.source();
        }
        msg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A loopback server answering `status_at(elapsed)`.
    async fn server(status_at: fn(Duration) -> u16) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let start = Instant::now();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = listener.accept().await {
                let code = status_at(start.elapsed());
                let mut buf = [0u8; 1024];
                let _ = c.read(&mut buf).await;
                let answer =
                    format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = c.write_all(answer.as_bytes()).await;
            }
        });
        format!("http://127.0.0.1:{port}/health")
    }

    async fn check(url: String, timeout_secs: u64) -> Result<Healthy, Unhealthy> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let check = HealthCheck {
            url,
            timeout: Duration::from_secs(timeout_secs),
            retries: 3,
        };
        check
            .wait(Probe::Http(&client), || async { Liveness::Alive })
            .await
    }

    #[tokio::test]
    async fn a_service_warming_up_with_503_is_waited_for_and_seen_at_once() {
        let t0 = Instant::now();
        let url = server(|t| if t < Duration::from_secs(2) { 503 } else { 200 }).await;
        check(url, 30).await.expect("healthy once warm");
        // Healthy 2 s after the server started, and seen within ~100 ms.
        let took = t0.elapsed();
        assert!(took >= Duration::from_secs(2), "{took:?}");
        assert!(took < Duration::from_millis(2300), "{took:?}");
    }

    #[tokio::test]
    async fn a_wrong_health_path_fails_fast_and_a_503_forever_at_the_deadline() {
        let t = Instant::now();
        let err = check(server(|_| 404).await, 30).await.unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(2), "{err}");
        assert!(err.to_string().contains("404"), "{err}");
        let t = Instant::now();
        let err = check(server(|_| 503).await, 1).await.unwrap_err();
        assert!(t.elapsed() >= Duration::from_millis(900), "{err}");
        assert!(err.to_string().contains("not healthy within 1 s"), "{err}");
    }
}
