//! The command line: parsing (clap), global options, and one file per
//! command. Commands are thin: they build a plan or a query and hand it to
//! the engine or the store.

mod audit;
mod backup;
mod check;
mod completions;
mod deploy;
mod history;
mod hook;
mod logs;
mod monitor;
mod pipeline;
mod releases;
mod remote;
mod report;
mod rollback;
mod serve;
mod start;
mod status;
mod stop;
mod watch;

use crate::input::config::DeployerConfig;
use crate::support::error::Failure;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// deployer: takes a service to running, healthy and registered, and rolls
/// back by itself when a phase fails.
#[derive(Debug, Parser)]
#[command(
    name = "deployer",
    version,
    about,
    long_about = None,
    after_help = "Exit codes: 0 success, 1 tests failed, 2 build failed, 3 start failed \
(or exited before healthy), 4 health check failed (rolled back), 5 transfer failed, \
6 register failed, 7 rollback failed (service may be down), 8 host unreachable or \
host key refused, 9 job interrupted, 10 invalid input, 11 locked by another deploy, 12 not found, \
13 nothing to roll back to, 14 git failed, 15 migration failed, 16 backup failed, 17 pipeline stage failed, 70 internal error."
)]
pub struct Cli {
    /// deployer's own config file (deployer.toml).
    #[arg(long, global = true, env = "DEPLOYER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Keep all state (jobs, releases, logs, locks) in this directory.
    /// Default: `state_dir` from the config, else ./.deployer
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Deploy to this server over SSH: user@host:port (default: this
    /// machine; seed: SERVER_HOST). Repeat for a rollout to several hosts.
    #[arg(long = "host", global = true, value_name = "USER@HOST:PORT")]
    pub hosts: Vec<String>,
    /// SSH private key for --host (seed: SSH_KEY_PATH).
    #[arg(long, global = true, value_name = "PATH")]
    pub ssh_key: Option<PathBuf>,
    /// known_hosts file checked for --host (default ~/.ssh/known_hosts).
    #[arg(long, global = true, value_name = "PATH")]
    pub known_hosts: Option<PathBuf>,
    /// Trust and record the host key of a server never contacted before.
    /// A changed host key is always refused.
    #[arg(long, global = true)]
    pub accept_new_host_key: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Deploy a service directory: Validation, Transfer, Build, Start Service,
    /// Verify Health, Register.
    Deploy(Box<deploy::Args>),
    /// Bring back an earlier release of a service.
    Rollback(rollback::Args),
    /// Show one job with its phases.
    Status(status::Args),
    /// List a service's jobs, newest first.
    History(history::Args),
    /// List a service's releases.
    Releases(releases::Args),
    /// Show the audit log.
    Audit(audit::Args),
    /// A job's report: phases and steps with durations, tests, outcome,
    /// rollback (text, JSON or Markdown).
    Report(report::Args),
    /// Stop a service's running release (it stays deployed).
    Stop(stop::Args),
    /// Start a service's current release again (after stop), health-checked.
    Start(start::Args),
    /// Stop and start a service's current release, health-checked.
    Restart(start::Args),
    /// Behind the proxy: answer 503 with a maintenance page until `resume`.
    Pause(start::PauseArgs),
    /// Behind the proxy: send the public port to the current release again.
    Resume(start::Args),
    /// Is the service healthy? One line per host; exit 4 when not (cron).
    Check(check::Args),
    /// Every service and host at a glance (the seed's health monitor);
    /// exit 4 when anything is unhealthy. `--watch` keeps watching.
    Monitor(monitor::Args),
    /// The current release's log on each host.
    Logs(logs::Args),
    /// Shell completions: `deployer completions bash > /etc/bash_completion.d/deployer`.
    Completions(completions::Args),
    /// The man page: `deployer man > deployer.1`.
    Man,
    /// Serve the HTTP API (port 8007 by default).
    Serve(serve::Args),
    /// The Sacred Loop: `pipeline run PATH --intent TEXT` runs the
    /// configured stages (verify, fix, …), then deploys and registers.
    Pipeline(pipeline::Args),
    /// Git hooks: `hook install --repo BARE_REPO` deploys each push.
    Hook(hook::Args),
    /// Back a service up now ([backup] of its current release).
    Backup(backup::BackupArgs),
    /// List a service's backups.
    Backups(backup::BackupArgs),
    /// Put a backup back (asks first, unless --yes).
    Restore(backup::RestoreArgs),
    /// Back up every service (for a daily cron line).
    Snapshot,
    /// What a process-method service's output goes through: lines to FILE,
    /// rotated by size. Started by deployer itself.
    #[command(hide = true)]
    LogWriter {
        file: PathBuf,
        #[arg(long, default_value_t = crate::support::logwriter::MAX_BYTES)]
        max_bytes: u64,
        #[arg(long, default_value_t = crate::support::logwriter::KEEP)]
        keep: usize,
    },
}

/// What every command gets: the loaded config and where state lives.
pub struct Context {
    pub config: DeployerConfig,
    /// The config file given with --config (DEPLOYER_CONFIG), if any.
    pub config_path: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub json: bool,
    /// `--host` flags, in order.
    pub hosts: Vec<String>,
}

impl Cli {
    pub async fn run(self) -> Result<i32, Failure> {
        // The seed's .env, below the environment (and the flags, below).
        let dotenv = crate::support::dotenv::load(std::path::Path::new(".env"))
            .map_err(|e| Failure::invalid(e.to_string()))?;
        let env = |k: &str| std::env::var(k).ok().or_else(|| dotenv.get(k).cloned());
        let mut config = DeployerConfig::load(self.config.as_deref(), &env)?;
        // Flags win over file and environment.

        if let Some(k) = self.ssh_key.clone() {
            config.target.ssh_key = Some(k);
        }
        if let Some(k) = self.known_hosts.clone() {
            config.target.known_hosts = Some(k);
        }
        config.target.accept_new_host_key |= self.accept_new_host_key;
        let state_dir = self
            .state_dir
            .clone()
            .or_else(|| config.state_dir.clone())
            .unwrap_or_else(|| PathBuf::from(".deployer"));
        // Absolute, so pid files, logs and messages do not depend on the
        // directory a later command runs in.
        let state_dir = std::path::absolute(&state_dir).map_err(|e| {
            Failure::invalid(format!("state directory {}: {e}", state_dir.display()))
        })?;
        let ctx = Context {
            config,
            config_path: self
                .config
                .as_deref()
                .map(|p| std::path::absolute(p).unwrap_or(p.to_path_buf())),
            state_dir,
            json: self.json,
            hosts: self.hosts.clone(),
        };
        ctx.recover_first(&self.command).await;
        match self.command {
            Command::Deploy(a) => deploy::run(ctx, *a).await,
            Command::Rollback(a) => rollback::run(ctx, a).await,
            Command::Status(a) => status::run(ctx, a).await,
            Command::History(a) => history::run(ctx, a).await,
            Command::Releases(a) => releases::run(ctx, a).await,
            Command::Audit(a) => audit::run(ctx, a).await,
            Command::Report(a) => report::run(ctx, a).await,
            Command::Stop(a) => stop::run(ctx, a).await,
            Command::Start(a) => start::start(ctx, a).await,
            Command::Restart(a) => start::restart(ctx, a).await,
            Command::Pause(a) => start::pause(ctx, a).await,
            Command::Resume(a) => start::resume(ctx, a).await,
            Command::Check(a) => check::run(ctx, a).await,
            Command::Logs(a) => logs::run(ctx, a).await,
            Command::Monitor(a) => monitor::run(ctx, a).await,
            Command::Completions(a) => completions::completions(a),
            Command::Man => completions::man(),
            Command::Serve(a) => serve::run(ctx, a).await,
            Command::Hook(a) => hook::run(ctx, a).await,
            Command::Pipeline(a) => pipeline::run(ctx, a).await,
            Command::Backup(a) => backup::backup(ctx, a).await,
            Command::Backups(a) => backup::backups(ctx, a).await,
            Command::Restore(a) => backup::restore(ctx, a).await,
            Command::Snapshot => backup::snapshot(ctx).await,
            Command::LogWriter {
                file,
                max_bytes,
                keep,
            } => crate::support::logwriter::run(std::io::stdin().lock(), &file, max_bytes, keep)
                .map(|()| 0)
                .map_err(|e| Failure::internal(format!("log {}: {e}", file.display()))),
        }
    }
}

impl Command {
    /// The service a command acts on or reads about, by name.
    fn service(&self) -> Option<&str> {
        Some(match self {
            Command::Rollback(a) => &a.name,
            Command::History(a) => &a.name,
            Command::Releases(a) => &a.name,
            Command::Start(a) | Command::Restart(a) | Command::Resume(a) => &a.name,
            Command::Pause(a) => &a.name,
            Command::Check(a) => &a.name,
            Command::Logs(a) => &a.name,
            Command::Backup(a) | Command::Backups(a) => &a.name,
            Command::Restore(a) => &a.name,
            _ => return None,
        })
    }
}

impl Context {
    /// Before a command on a service (or a job of one, or every service
    /// for `monitor`): when a job of it was interrupted or a drain outlived
    /// its deployer, and no job holds its lock, the service is swept
    /// (what recovery does is said on stderr). Deploys sweep under their
    /// own lock, and `stop` sweeps without starting what it is about to
    /// stop.
    async fn recover_first(&self, command: &Command) {
        if !self.state_dir.join("deployer.db").exists() {
            return;
        }
        let service = match command {
            Command::Status(a) => match self.store().await {
                Ok(store) => store
                    .job(&a.job)
                    .await
                    .ok()
                    .flatten()
                    .map(|j| j.service_name),
                Err(_) => None,
            },
            other => other.service().map(str::to_string),
        };
        let monitor = matches!(command, Command::Monitor(_));
        if service.is_none() && !monitor {
            return;
        }
        let Ok(engine) = self.engine(0, &[]) else {
            return;
        };
        let sink = crate::render::output::Notes;
        match service {
            Some(service) => {
                if let Err(f) = engine.recover_service(&service, &sink).await {
                    eprintln!("warning: recovering {service}: {}", f.message);
                }
            }
            None => {
                engine.recover_all(&[], &[], &sink).await;
            }
        }
        engine.close().await;
    }

    /// Opens the store for reading; a state directory that was never used is
    /// "not found", not silently created.
    pub async fn store(&self) -> Result<crate::store::Store, Failure> {
        if !self.state_dir.join("deployer.db").exists() {
            return Err(Failure::not_found(format!(
                "no deployer state in {} (nothing was deployed with this state directory)",
                self.state_dir.display()
            )));
        }
        Ok(crate::store::Store::open(&self.state_dir).await?)
    }

    /// The hosts from `--host`, else `manifest_hosts` (empty: the config's
    /// target).
    pub fn target_hosts<'a>(&'a self, manifest_hosts: &'a [String]) -> &'a [String] {
        if self.hosts.is_empty() {
            manifest_hosts
        } else {
            &self.hosts
        }
    }

    /// An engine acting on the hosts from `--host`, else `manifest_hosts`,
    /// else the config's `target.host` (SERVER_HOST), else this machine.
    pub fn engine(
        &self,
        lock_wait_secs: u64,
        manifest_hosts: &[String],
    ) -> Result<crate::engine::Engine, Failure> {
        let engine = crate::engine::Engine::new(
            self.config.clone(),
            self.state_dir.clone(),
            std::time::Duration::from_secs(lock_wait_secs),
            crate::hosting::site::targets(&self.config, self.target_hosts(manifest_hosts))?,
        );
        // `--host` names where a day-2 command acts; without it, it acts on
        // the hosts the service was deployed to.
        Ok(if self.hosts.is_empty() {
            engine
        } else {
            engine.pinned()
        })
    }

    /// Renders a finished job and gives the exit code for it.
    pub fn finish(&self, job: &crate::model::Job) -> i32 {
        if self.json {
            crate::render::output::print_json(job);
        }
        job.state.exit_code()
    }

    pub fn sink(&self) -> Box<dyn crate::engine::Sink> {
        if self.json {
            Box::new(crate::render::output::Quiet)
        } else {
            Box::new(crate::render::output::Human::default())
        }
    }
}
