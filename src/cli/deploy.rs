//! `deployer deploy PATH`: every field of the spec's DeployRequest as a flag,
//! so a directory without a manifest deploys too.

use super::Context;
use crate::error::Failure;
use crate::plan::{DeployRequest, Plan};
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
    /// process (this machine), docker, systemd (servers), or auto (docker
    /// when an engine answers).
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
    /// Health check path (default /health).
    #[arg(long)]
    pub health_path: Option<String>,
    /// Wait this many seconds for another deploy of the service to finish
    /// instead of refusing at once.
    /// (At most a day.)
    #[arg(long, default_value_t = 0, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub wait: u64,
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
    };
    if let Some(server) = &args.server {
        let mut req = req;
        req.service_path = std::path::absolute(&req.service_path).unwrap_or(req.service_path);
        return super::remote::deploy(&ctx, server, &req).await;
    }
    let plan = Plan::build(&req, &ctx.config, &|k| std::env::var(k).ok())?;
    let engine = ctx.engine(args.wait, &plan.hosts)?;
    let sink = ctx.sink();
    let job = engine.deploy(plan, sink.as_ref()).await;
    engine.close().await;
    Ok(ctx.finish(&job?))
}
