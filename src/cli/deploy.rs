//! `deployer deploy PATH`: every field of the spec's DeployRequest as a flag,
//! so a directory without a manifest deploys too.

use super::Context;
use crate::input::plan::{DeployRequest, Plan};
use crate::support::error::Failure;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The service directory.
    pub path: PathBuf,
    /// Service name (default: `name` in service.toml).
    #[arg(long)]
    pub name: Option<String>,
    /// Port the service listens on (given to it as PORT).
    #[arg(long)]
    pub port: Option<u16>,
    /// process (this machine), docker, systemd (servers), swarm (a swarm
    /// manager), or auto (docker when an engine answers).
    #[arg(long)]
    pub method: Option<String>,
    /// An environment variable for the service, KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub env: Vec<(String, String)>,
    /// The name of a secret for the service (repeatable). Its value is read
    /// from deployer's environment or the secrets file, never from flags.
    #[arg(long = "secret", value_name = "NAME")]
    pub secrets: Vec<String>,
    /// Droplet id to register the service under.
    #[arg(long)]
    pub droplet_id: Option<i64>,
    /// Do not register the service, even when a registry is configured.
    #[arg(long)]
    pub no_register: bool,
    /// Do not run the service's [tests] (the skip is recorded in the audit
    /// log).
    #[arg(long)]
    pub skip_tests: bool,
    /// Start command for the process method (run with sh -c in the release).
    #[arg(long)]
    pub start: Option<String>,
    /// Build command, run in the release directory in the Build phase.
    #[arg(long)]
    pub build: Option<String>,
    /// Serve the service through deployer's reverse proxy (nginx) on this
    /// public port: releases get private ports, and a redeploy switches
    /// the proxy only once the new one is healthy ([proxy] port).
    #[arg(long, value_name = "PORT")]
    pub proxy_port: Option<u16>,
    /// For --method swarm: how many tasks run ([swarm] replicas).
    #[arg(long, value_name = "N")]
    pub replicas: Option<u32>,
    /// Health check path (default /health).
    #[arg(long)]
    pub health_path: Option<String>,
    /// Wait this many seconds for another deploy of the service to finish
    /// instead of refusing at once.
    /// (At most a day.)
    #[arg(long, default_value_t = 0, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub wait: u64,
    /// Release exactly a commit's tree of PATH's git work tree (default
    /// HEAD). Refused while the tree has uncommitted changes, unless -m.
    #[arg(long, value_name = "REF", num_args = 0..=1, default_missing_value = "HEAD")]
    pub git: Option<String>,
    /// With --git: commit every change first, with this message.
    #[arg(
        short = 'm',
        long = "message",
        value_name = "MESSAGE",
        requires = "git"
    )]
    pub message: Option<String>,
    /// With --git: push the branch to the remote first (`[git] remote`,
    /// default origin).
    #[arg(long, requires = "git")]
    pub push: bool,
    /// With --git and PATH a bare repository (a hook's): the service's
    /// directory inside it.
    #[arg(long, value_name = "SUBDIR", requires = "git")]
    pub git_subdir: Option<String>,
    /// Print what the deploy would do, step by step and host by host (the
    /// exact commands, secrets masked), and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Have the deployer serving at URL run the deploy (`deployer serve`);
    /// its token comes from DEPLOYER_API_TOKEN, else from the state
    /// directory of a server on this machine. PATH is a path on that
    /// server's machine.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
}

/// A flag value that is not `KEY=VALUE`.
#[derive(Debug, thiserror::Error)]
#[error("expected KEY=VALUE, got '{0}'")]
pub struct NotKeyValue(String);

fn parse_key_value(s: &str) -> Result<(String, String), NotKeyValue> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| NotKeyValue(s.to_string()))
}

pub async fn run(ctx: Context, args: Args) -> Result<i32, Failure> {
    run_with(ctx, args, None).await
}

/// A deploy, or with `pipeline` (a pipeline run's intent) the configured
/// stages first.
pub async fn run_with(
    ctx: Context,
    args: Args,
    pipeline: Option<Option<String>>,
) -> Result<i32, Failure> {
    let req = DeployRequest {
        service_path: args.path,
        service_name: args.name,
        droplet_id: args.droplet_id,
        service_port: args.port,
        deployment_method: args.method,
        environment_vars: args.env.into_iter().collect(),
        auto_register: args.no_register.then_some(false),
        start: args.start,
        build: args.build,
        health_path: args.health_path,
        secrets: args.secrets,
        skip_tests: args.skip_tests.then_some(true),
        proxy_port: args.proxy_port,
        replicas: args.replicas,
        // With --server, the server exports the commit itself.
        git_ref: args.git.clone(),
    };
    if let Some(server) = &args.server {
        let mut req = req;
        req.service_path = std::path::absolute(&req.service_path).unwrap_or(req.service_path);
        return super::remote::deploy(&ctx, server, &req, pipeline).await;
    }
    let mut req = req;
    let git = match &args.git {
        Some(reference) => {
            let asked = GitAsk {
                message: args.message.as_deref(),
                push: args.push,
                subdir: args.git_subdir.as_deref(),
            };
            Some(from_git(&ctx, &mut req, reference, &asked)?)
        }
        None => None,
    };
    let (git, _exported) = git.unzip();
    // `_exported`, the commit's tree, lives until the deploy is done.
    if args.dry_run {
        dry_run(&ctx, &req, git.clone()).await
    } else {
        deploy_plan(&ctx, &req, git.clone(), args.wait, pipeline).await
    }
}

/// `--dry-run`: Validation, then what each step would do.
async fn dry_run(
    ctx: &Context,
    req: &DeployRequest,
    git: Option<crate::input::plan::GitSource>,
) -> Result<i32, Failure> {
    let mut plan = Plan::build(req, &ctx.config, &|k| std::env::var(k).ok())?;
    plan.git = git;
    plan.address = crate::input::plan::address_for(&ctx.config, ctx.target_hosts(&plan.hosts));
    let engine = ctx.engine(0, &plan.hosts)?;
    let sink = ctx.sink();
    let planned = engine.dry_run(plan, sink.as_ref()).await;
    engine.close().await;
    let planned = planned?;
    if ctx.json {
        crate::render::output::print_json(&planned);
        return Ok(0);
    }
    anstream::println!("dry run: nothing was changed; the deploy would:");
    for p in &planned {
        let what = match &p.skip {
            Some(reason) => format!("skip ({reason})"),
            None => crate::render::output::printable(&p.would),
        };
        anstream::println!("  [{}] {} / {}: {what}", p.host, p.phase, p.step);
    }
    Ok(0)
}

/// What `--git` was asked to do first.
struct GitAsk<'a> {
    message: Option<&'a str>,
    push: bool,
    subdir: Option<&'a str>,
}

async fn deploy_plan(
    ctx: &Context,
    req: &DeployRequest,
    git: Option<crate::input::plan::GitSource>,
    wait: u64,
    pipeline: Option<Option<String>>,
) -> Result<i32, Failure> {
    let env = |k: &str| std::env::var(k).ok();
    let mut plan = Plan::build(req, &ctx.config, &env)?;
    plan.git = git;
    plan.address = crate::input::plan::address_for(&ctx.config, ctx.target_hosts(&plan.hosts));
    if let Some(intent) = pipeline {
        plan = plan.with_pipeline(intent, &ctx.config, &env)?;
    }
    let engine = ctx.engine(wait, &plan.hosts)?;
    let sink = ctx.sink();
    let job = engine.deploy(plan, sink.as_ref()).await;
    engine.close().await;
    Ok(ctx.finish(&job?))
}

/// A git-driven release: commit (with -m) and push (with --push) as asked,
/// then export the commit's tree and deploy that instead of the directory.
fn from_git(
    ctx: &Context,
    req: &mut DeployRequest,
    reference: &str,
    args: &GitAsk,
) -> Result<
    (
        crate::input::plan::GitSource,
        crate::integrations::git::Exported,
    ),
    Failure,
> {
    use crate::support::error::FailureKind;
    let dir = req.service_path.clone();
    let changes = crate::integrations::git::uncommitted(&dir)?;
    if !changes.is_empty() {
        match args.message {
            Some(m) => crate::integrations::git::commit_all(&dir, m)?,
            None => {
                return Err(Failure::new(
                    FailureKind::Git,
                    format!(
                        "{} has uncommitted changes; commit them, or pass -m MESSAGE to \
                         commit them now:\n{changes}",
                        dir.display()
                    ),
                ));
            }
        }
    }
    if args.push {
        let remote = ctx.config.git.remote.as_deref().unwrap_or("origin");
        crate::integrations::git::push(&dir, remote)?;
    }
    let exported = crate::integrations::git::export_ref(&dir, reference, args.subdir)?;
    let source = req.from_commit(&exported);
    Ok((source, exported))
}
