//! `deployer monitor [--watch] [--json]`: the seed's server health monitor.
//! Exit code 4 when any service is unhealthy or any host unreachable, so
//! cron can use it; `--watch` is a terminal view that refreshes itself.

use super::Context;
use crate::engine::Snapshot;
use crate::render::output::monitor::{
    HOST_HEADER, SERVICE_HEADER, host_row, registry_text, service_row, summary,
};
use crate::support::error::{Failure, FailureKind};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep watching: a terminal view refreshed every --interval seconds,
    /// changes since the last refresh highlighted; q quits.
    #[arg(long)]
    pub watch: bool,
    /// Seconds between refreshes with --watch (1 to 3600).
    #[arg(long, default_value_t = 5, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub interval: u64,
}

pub async fn run(ctx: Context, args: Args) -> Result<i32, Failure> {
    let engine = ctx.engine(0, &[])?;
    if args.watch {
        if ctx.json {
            return Err(Failure::invalid("--watch and --json do not go together"));
        }
        return super::watch::run(engine, args.interval).await;
    }
    let snapshot = engine.monitor().await;
    engine.close().await;
    let snapshot = snapshot?;
    if ctx.json {
        crate::render::output::print_json(&snapshot);
    } else {
        print(&snapshot);
    }
    Ok(if snapshot.healthy {
        0
    } else {
        FailureKind::Health.exit_code()
    })
}

fn print(s: &Snapshot) {
    anstream::println!("deployer monitor, {}", s.at.format("%Y-%m-%d %H:%M:%S UTC"));
    anstream::println!("{}\n", registry_text(s));
    if s.services.is_empty() {
        anstream::println!("No service has a current release.\n");
    } else {
        let rows: Vec<Vec<String>> = s.services.iter().map(service_row).collect();
        crate::render::output::print_table(&SERVICE_HEADER, &rows);
        anstream::println!();
    }
    let rows: Vec<Vec<String>> = s.hosts.iter().map(host_row).collect();
    crate::render::output::print_table(&HOST_HEADER, &rows);
    anstream::println!("\n{}", summary(s));
}
