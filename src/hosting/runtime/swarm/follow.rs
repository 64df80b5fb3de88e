//! Following a swarm update until it converges (every task of the new
//! image running, which for a task with a health check means healthy) or
//! Swarm rolls it back.

use super::{CMD_TIMEOUT, ReleaseCtx, RuntimeError, SwarmRuntime, spec};
use crate::support::cmd::{Cmd, quote};
use std::time::{Duration, Instant};

/// One task that should be running.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskLine {
    /// The node's id, shortened (nodes may share a host name).
    pub node: String,
    pub release: String,
    /// Swarm's state: `preparing`, `starting`, `running`, ...
    pub state: String,
}

/// Where an update stands.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// The release the job wants running.
    pub want: String,
    pub replicas: u32,
    /// `updating`, `completed`, `rollback_started`, ...; none after a create.
    pub update: Option<String>,
    pub message: String,
    pub tasks: Vec<TaskLine>,
    /// Tasks of the wanted release that failed (Swarm starts others), and
    /// the last one's error.
    pub failed_tasks: usize,
    pub last_error: String,
    /// Replaced tasks still running (stopping).
    pub stopping: usize,
}

impl Progress {
    pub(super) fn parse(want: &str, out: &str) -> Option<Progress> {
        let mut lines = out.lines();
        let mut head = lines.next()?.splitn(3, '|');
        let update = head.next().filter(|s| !s.is_empty()).map(String::from);
        let message = head.next().unwrap_or("").to_string();
        let replicas = head.next().unwrap_or("0").trim().parse().unwrap_or(0);
        let (mut tasks, mut failed_tasks, mut last_error) = (Vec::new(), 0, String::new());
        let mut stopping = 0;
        for l in lines {
            let Some(rest) = l.strip_prefix("task ") else {
                continue;
            };
            let mut w = rest.splitn(5, ' ');
            let (Some(node), Some(image), Some(state), Some(desired)) =
                (w.next(), w.next(), w.next(), w.next())
            else {
                continue;
            };
            let image = image.split('@').next().unwrap_or(image);
            let release = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
            if desired == "running" {
                tasks.push(TaskLine {
                    node: node.chars().take(12).collect(),
                    release: release.to_string(),
                    state: state.to_string(),
                });
            } else if state == "running" {
                stopping += 1;
            } else if release == want && matches!(state, "failed" | "rejected") {
                failed_tasks += 1;
                last_error = w.next().unwrap_or("").trim().to_string();
            }
        }
        Some(Progress {
            want: want.to_string(),
            replicas,
            update,
            message,
            tasks,
            failed_tasks,
            last_error,
            stopping,
        })
    }

    /// Swarm gave the update up: rolled back, rolling back, or paused.
    pub fn failed(&self) -> bool {
        matches!(
            self.update.as_deref(),
            Some("rollback_started" | "rollback_completed" | "rollback_paused" | "paused")
        )
    }

    pub fn rolled_back(&self) -> bool {
        self.update.as_deref() == Some("rollback_completed")
    }

    /// Tasks of the wanted release that run.
    pub fn ready(&self) -> usize {
        self.tasks
            .iter()
            .filter(|t| t.release == self.want && t.state == "running")
            .count()
    }

    /// Every task runs the wanted release, and nothing else runs: after
    /// an update (or a create), or after Swarm's rollback to it.
    pub fn converged(&self) -> bool {
        matches!(
            self.update.as_deref(),
            None | Some("completed") | Some("rollback_completed")
        ) && self.tasks.len() == self.replicas as usize
            && self.ready() == self.replicas as usize
            && self.stopping == 0
    }

    /// The distinct nodes running tasks of the wanted release.
    pub fn nodes(&self) -> Vec<String> {
        let mut nodes: Vec<String> = self
            .tasks
            .iter()
            .filter(|t| t.release == self.want && t.state == "running")
            .map(|t| t.node.clone())
            .collect();
        nodes.sort();
        nodes.dedup();
        nodes
    }

    /// "2/3 tasks of release R running on 2 nodes (a, b); 1 starting".
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{}/{} tasks of release {} running",
            self.ready(),
            self.replicas,
            self.want
        );
        let nodes = self.nodes();
        if !nodes.is_empty() {
            s.push_str(&format!(
                " on {} node{} ({})",
                nodes.len(),
                if nodes.len() == 1 { "" } else { "s" },
                nodes.join(", ")
            ));
        }
        let others: Vec<String> = self
            .tasks
            .iter()
            .filter(|t| !(t.release == self.want && t.state == "running"))
            .map(|t| format!("{} {}", t.release, t.state))
            .collect();
        if !others.is_empty() {
            s.push_str(&format!("; also {}", others.join(", ")));
        }
        if self.stopping > 0 {
            s.push_str(&format!("; {} replaced still stopping", self.stopping));
        }
        if let Some(u) = &self.update {
            s.push_str(&format!("; update {u}"));
        }
        s
    }

    /// What Swarm said of a failed update.
    pub fn update_said(&self) -> String {
        let what = match self.update.as_deref() {
            Some("rollback_completed") => "Swarm rolled the update back",
            Some("rollback_started") => "Swarm is rolling the update back",
            Some("paused") | Some("rollback_paused") => "Swarm paused the update",
            _ => "the update did not finish",
        };
        match self.message.trim() {
            "" => what.to_string(),
            m => format!("{what}: {m}"),
        }
    }
}

/// The service's update status, then its tasks (a task Swarm drops
/// between the two listings is left out, not an error).
fn progress_cmd(service: &str) -> Cmd {
    let s = quote(service);
    let script = format!(
        "docker service inspect {s} --format '{{{{if .UpdateStatus}}}}{{{{.UpdateStatus.State}}}}|{{{{.UpdateStatus.Message}}}}{{{{else}}}}|{{{{end}}}}|{{{{.Spec.Mode.Replicated.Replicas}}}}' || exit 1\n\
         ids=$(docker service ps -q {s})\n\
         [ -z \"$ids\" ] || docker inspect --format 'task {{{{.NodeID}}}} {{{{.Spec.ContainerSpec.Image}}}} {{{{.Status.State}}}} {{{{.DesiredState}}}} {{{{.Status.Err}}}}' $ids 2>/dev/null || true"
    );
    Cmd::new("sh").args(["-c", &script])
}

/// Why a swarm update did not converge.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// What Swarm's update status said.
    #[error("{0}")]
    Failed(String),
    #[error("{failed} tasks of release {release} failed, the last with: {last}")]
    TasksFailed {
        failed: usize,
        release: String,
        last: String,
    },
    #[error("the update did not converge within {secs} s: {summary}")]
    Timeout { secs: u64, summary: String },
}

impl SwarmRuntime {
    pub async fn progress(&self, ctx: &ReleaseCtx) -> Result<Progress, RuntimeError> {
        let out = self
            .host
            .run(&progress_cmd(&ctx.service), CMD_TIMEOUT)
            .await?;
        if !out.success() {
            return Err(RuntimeError::Release(format!(
                "swarm service {} is gone: {}",
                ctx.service,
                out.tail(1)
            )));
        }
        Progress::parse(&ctx.release, &out.stdout)
            .ok_or_else(|| RuntimeError::Release("unreadable `docker service inspect`".into()))
    }

    /// Waits until the update converges, Swarm rolls it back, or `limit`
    /// passes; `seen` hears of each change. A rollback Swarm has begun is
    /// waited for to its end, so the service is whole when this returns.
    pub async fn follow(
        &self,
        ctx: &ReleaseCtx,
        limit: Duration,
        seen: &(dyn Fn(&Progress) + Sync),
    ) -> Result<Progress, RuntimeError> {
        self.follow_until(ctx, limit, seen, false).await
    }

    /// Waits for Swarm's own rollback to this release to converge (its
    /// rollback states are then the way there, not a failure).
    pub async fn follow_back(
        &self,
        ctx: &ReleaseCtx,
        limit: Duration,
    ) -> Result<Progress, RuntimeError> {
        self.follow_until(ctx, limit, &|_| {}, true).await
    }

    async fn follow_until(
        &self,
        ctx: &ReleaseCtx,
        limit: Duration,
        seen: &(dyn Fn(&Progress) + Sync),
        back: bool,
    ) -> Result<Progress, RuntimeError> {
        let deadline = Instant::now() + limit;
        let mut last: Option<Progress> = None;
        loop {
            let p = self.progress(ctx).await?;
            if last.as_ref() != Some(&p) {
                seen(&p);
            }
            // Converged on the wanted release: after Swarm rolled back to
            // it, that is the undo's success.
            if p.converged() {
                return Ok(p);
            }
            let ended = !matches!(p.update.as_deref(), Some("rollback_started"));
            if p.failed() && ended && !back {
                return Err(UpdateError::Failed(p.update_said()).into());
            }
            // A new service has no rollback: its tasks fail and are
            // started again, so give up once each failed twice.
            if p.update.is_none() && p.failed_tasks >= 2 * p.replicas.max(1) as usize {
                return Err(UpdateError::TasksFailed {
                    failed: p.failed_tasks,
                    release: p.want,
                    last: p.last_error,
                }
                .into());
            }
            if Instant::now() >= deadline {
                return Err(UpdateError::Timeout {
                    secs: limit.as_secs(),
                    summary: p.summary(),
                }
                .into());
            }
            last = Some(p);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// How long an update of this release may take: each batch starts
    /// tasks (up to the health timeout), is watched, and waits the delay.
    pub fn update_limit(ctx: &ReleaseCtx) -> Duration {
        let s = spec(ctx);
        let batches = s.replicas.div_ceil(s.update_parallelism.max(1)) as u64;
        let per_batch = ctx.spec.health.timeout_secs + s.update_monitor_secs + s.update_delay_secs;
        Duration::from_secs(batches * (per_batch + 10) + 30)
    }
}
