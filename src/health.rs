//! Verify Health: poll a service's health URL from the moment it starts until
//! it answers 2xx, it has failed too often, its process exits, or a deadline
//! passes. Polling backs off from 50 ms to at most 100 ms, so a service that
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
    /// Consecutive unhealthy answers, once the service has answered at all,
    /// that fail the check before the deadline. Refused connections before
    /// the first answer only count against the deadline: the service may
    /// still be starting.
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
    OnHost(&'a crate::host::Host),
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
                use crate::cmd::Transport;
                let secs = format!("{:.1}", timeout.as_secs_f64());
                let cmd = crate::cmd::Cmd::new("curl").args([
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
        let mut answered = false;
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
                Answer::Status(code) => {
                    answered = true;
                    consecutive += 1;
                    last = format!("answered {}", status_text(code));
                }
                Answer::NoAnswer(why) => {
                    if answered {
                        consecutive += 1;
                    }
                    last = why;
                }
            }
            if answered && consecutive > self.retries {
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

fn describe(e: &reqwest::Error) -> String {
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
