//! `deployer monitor [--watch] [--json]`: the seed's server health monitor.
//! Exit code 4 when any service is unhealthy or any host unreachable, so
//! cron can use it; `--watch` is a terminal view that refreshes itself.

use super::Context;
use crate::engine::{ServiceLine, Snapshot};
use crate::error::{Failure, FailureKind};
use crate::host::human_bytes;

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
        crate::output::print_json(&snapshot);
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
        crate::output::print_table(&SERVICE_HEADER, &rows);
        anstream::println!();
    }
    let rows: Vec<Vec<String>> = s.hosts.iter().map(host_row).collect();
    crate::output::print_table(&HOST_HEADER, &rows);
    anstream::println!("\n{}", summary(s));
}

pub const SERVICE_HEADER: [&str; 7] = ["", "SERVICE", "HOST", "PORT", "HEALTH", "RELEASE", "SINCE"];
pub const HOST_HEADER: [&str; 4] = ["HOST", "CPU", "MEMORY", "DISK"];

pub fn registry_text(s: &Snapshot) -> String {
    let r = &s.registry;
    let here = format!("{} registered here", r.registered);
    match (&r.url, r.reachable) {
        (Some(url), Some(true)) => format!(
            "Registry: ✓ {url} answered in {} ms ({here})",
            r.ms.unwrap_or(0)
        ),
        (Some(url), _) => format!("Registry: ✗ {url} does not answer ({here})"),
        (None, _) => format!("Registry: none configured (registry_url) ({here})"),
    }
}

pub fn service_row(l: &ServiceLine) -> Vec<String> {
    let c = &l.check;
    vec![
        if c.healthy { "✓" } else { "✗" }.to_string(),
        l.service.clone(),
        c.host.clone(),
        l.port.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
        match c.ms {
            Some(ms) if c.healthy => format!("{ms} ms"),
            _ => c.details.clone(),
        },
        c.release.clone().unwrap_or_else(|| "-".into()),
        l.since.map(since).unwrap_or_else(|| "-".into()),
    ]
}

pub fn host_row(h: &crate::engine::HostLine) -> Vec<String> {
    if let Some(e) = &h.error {
        return vec![
            h.host.clone(),
            format!("✗ {}", first_line(e)),
            "".into(),
            "".into(),
        ];
    }
    let pair = |used: Option<u64>, total: Option<u64>| match (used, total) {
        (Some(u), Some(t)) if t > 0 => format!(
            "{} / {} ({:.0}%)",
            human_bytes(u),
            human_bytes(t),
            100.0 * u as f64 / t as f64
        ),
        _ => "-".into(),
    };
    vec![
        h.host.clone(),
        h.cpu_percent
            .map(|c| format!("{c:.0}%"))
            .unwrap_or_else(|| "-".into()),
        pair(h.memory_used_bytes, h.memory_total_bytes),
        pair(h.disk_used_bytes, h.disk_total_bytes),
    ]
}

pub fn summary(s: &Snapshot) -> String {
    let healthy = s.services.iter().filter(|l| l.check.healthy).count();
    let down = s.hosts.iter().filter(|h| h.error.is_some()).count();
    let mut text = format!("{healthy} of {} services healthy", s.services.len());
    if down > 0 {
        text.push_str(&format!("; {down} hosts unreachable"));
    }
    text
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// A time and how long ago it was.
fn since(t: chrono::DateTime<chrono::Utc>) -> String {
    let ago = (chrono::Utc::now() - t).num_seconds().max(0);
    let ago = match ago {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min", s / 60),
        s if s < 86_400 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86_400),
    };
    format!("{} ({ago} ago)", t.format("%Y-%m-%d %H:%M"))
}
