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

/// A passed check.
#[derive(Clone, Debug)]
pub struct Healthy {
    pub after: Duration,
    pub checks: u32,
}

const FIRST_INTERVAL: Duration = Duration::from_millis(50);
const MAX_INTERVAL: Duration = Duration::from_millis(100);

impl HealthCheck {
    /// Polls until healthy. `liveness` is asked between polls; an exited
    /// service fails the check at once.
    pub async fn wait<F, Fut>(
        &self,
        client: &reqwest::Client,
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
            match client.get(&self.url).timeout(per_request).send().await {
                Ok(resp) if resp.status().is_success() => {
                    return Ok(Healthy {
                        after: start.elapsed(),
                        checks,
                    });
                }
                Ok(resp) => {
                    answered = true;
                    consecutive += 1;
                    last = format!("answered {}", resp.status());
                }
                Err(e) => {
                    if answered {
                        consecutive += 1;
                    }
                    last = describe(&e);
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
