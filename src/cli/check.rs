//! `deployer check NAME [--log FILE]`: the seed's health-check, one line per
//! host, exit code 4 when any is unhealthy, for cron:
//! `*/5 * * * * deployer --state-dir /var/lib/deployer check api --log /var/log/deployer-check.log`.

use super::Context;
use crate::support::error::{Failure, FailureKind};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The service.
    pub name: String,
    /// Also append each line, with the time, to this file.
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
}

pub async fn run(ctx: Context, args: Args) -> Result<i32, Failure> {
    let engine = ctx.engine(0, &[])?;
    let lines = engine.check(&args.name).await;
    engine.close().await;
    let lines = lines?;
    let healthy = lines.iter().all(|l| l.healthy);
    if ctx.json {
        crate::render::output::print_json(&lines);
    }
    let mut text = String::new();
    for l in &lines {
        let line = format!(
            "{} {} on {}: {}{}{} (release {})",
            if l.healthy { "✓" } else { "✗" },
            args.name,
            l.host,
            crate::render::output::printable(&l.details),
            l.ms.map(|ms| format!(" in {ms} ms")).unwrap_or_default(),
            l.replicas
                .as_ref()
                .map(|r| format!(", {r} tasks running"))
                .unwrap_or_default(),
            l.release.as_deref().unwrap_or("-")
        );
        if !ctx.json {
            anstream::println!("{line}");
        }
        text.push_str(&format!(
            "{} {line}\n",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ));
    }
    if let Some(path) = &args.log {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| Failure::internal(format!("appending to {}: {e}", path.display())))?;
    }
    Ok(if healthy {
        0
    } else {
        FailureKind::Health.exit_code()
    })
}
