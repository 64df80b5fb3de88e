//! `deployer serve`: the HTTP API over the same engine.

use super::Context;
use crate::api::guard::TokenSource;
use crate::api::{ServeOptions, serve};
use crate::support::error::Failure;
use crate::support::secret::Secret;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Port to listen on (default: serve_port or SERVICE_PORT, else 8007;
    /// 0 picks a free one).
    #[arg(long)]
    pub port: Option<u16>,
    /// Address to listen on (default 127.0.0.1).
    #[arg(long)]
    pub bind: Option<String>,
    /// A directory deploy requests may name (repeatable).
    #[arg(long = "allow-root", value_name = "DIR")]
    pub allow_roots: Vec<PathBuf>,
    /// Deploy jobs run at once.
    #[arg(long)]
    pub workers: Option<usize>,
    /// Deploys and rollbacks accepted and not finished, at most (default
    /// 64); more are answered 429.
    #[arg(long)]
    pub max_queued: Option<usize>,
    /// A host name the server answers to besides its addresses and
    /// localhost (repeatable); requests naming any other are refused.
    #[arg(long = "allow-host", value_name = "NAME")]
    pub allow_hosts: Vec<String>,
}

pub async fn run(ctx: Context, args: Args) -> Result<i32, Failure> {
    let api = &ctx.config.api;
    let port = args.port.or(ctx.config.serve_port).unwrap_or(8007);
    let bind = args
        .bind
        .or(api.bind.clone())
        .unwrap_or_else(|| "127.0.0.1".into());
    let ip: std::net::IpAddr = bind
        .parse()
        .map_err(|_| Failure::invalid(format!("--bind {bind}: not an IP address")))?;
    // Set but empty is a mistake to refuse, not the same as unset.
    let token = std::env::var("DEPLOYER_API_TOKEN")
        .ok()
        .map(Secret::new)
        .or(api.token.clone());
    let mut allowed_roots = Vec::new();
    for root in args.allow_roots.iter().chain(&api.allowed_roots) {
        let canonical = root
            .canonicalize()
            .map_err(|e| Failure::invalid(format!("allowed root {}: {e}", root.display())))?;
        allowed_roots.push(canonical);
    }
    let options = ServeOptions {
        addr: std::net::SocketAddr::new(ip, port),
        token,
        read_requires_token: api.read_requires_token,
        allowed_roots,
        workers: args.workers.or(api.workers).unwrap_or(4),
        max_queued: args.max_queued.or(api.max_queued).unwrap_or(64),
        allowed_hosts: args
            .allow_hosts
            .iter()
            .chain(&api.allowed_hosts)
            .map(|h| h.to_ascii_lowercase())
            .collect(),
    };
    serve(ctx.config, ctx.state_dir, options, |s| {
        if !s.interrupted.is_empty() {
            eprintln!(
                "deployer: marked {} job(s) left by a previous server as interrupted: {}",
                s.interrupted.len(),
                s.interrupted.join(", ")
            );
        }
        match &s.token {
            TokenSource::Configured => {}
            TokenSource::Generated(path) => eprintln!(
                "deployer: no API token was set; made one and kept it in {} (mode 0600). \
                 Clients send it as Authorization: Bearer TOKEN; deploy --server on this \
                 machine reads it from there.",
                path.display()
            ),
            TokenSource::Stored(path) => {
                eprintln!("deployer: the API token is the one in {}", path.display())
            }
        }
        // The first line on stdout says where to reach the server (tests read it).
        println!("deployer listening on http://{}", s.addr);
    })
    .await?;
    Ok(0)
}
