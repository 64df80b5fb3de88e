//! `deployer backup NAME`, `backups NAME`, `restore NAME BACKUP` and
//! `snapshot`: a service's backups on its target.
//!
//! A daily snapshot of every service, as the ops seed's cron line:
//! `0 3 * * * deployer --state-dir /var/lib/deployer snapshot`.

use super::Context;
use crate::render::output::{print_json, print_table};
use crate::support::error::Failure;

#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// The service.
    pub name: String,
}

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The service.
    pub name: String,
    /// The backup's id (see `deployer backups NAME`).
    pub backup: String,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
}

pub async fn backup(ctx: Context, args: BackupArgs) -> Result<i32, Failure> {
    let engine = ctx.engine(0, &[])?;
    let taken = engine.backup(&args.name).await;
    engine.close().await;
    let taken = taken?;
    if ctx.json {
        print_json(&taken);
    } else {
        anstream::println!(
            "{}: backup {} ({}) verified, at {}",
            args.name,
            taken.id,
            crate::hosting::host::human_bytes(taken.size),
            taken.path
        );
    }
    Ok(0)
}

pub async fn backups(ctx: Context, args: BackupArgs) -> Result<i32, Failure> {
    let engine = ctx.engine(0, &[])?;
    let found = engine.backups(&args.name).await;
    engine.close().await;
    let found = found?;
    if ctx.json {
        print_json(&found);
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = found
        .iter()
        .map(|b| {
            vec![
                b.id.clone(),
                b.created_at.clone(),
                b.release.clone(),
                crate::hosting::host::human_bytes(b.size),
                b.path.clone(),
            ]
        })
        .collect();
    print_table(&["BACKUP", "CREATED", "RELEASE", "SIZE", "PATH"], &rows);
    Ok(0)
}

pub async fn restore(ctx: Context, args: RestoreArgs) -> Result<i32, Failure> {
    if !args.yes && !confirm(&args)? {
        return Err(Failure::invalid("not restored: not confirmed"));
    }
    let engine = ctx.engine(0, &[])?;
    let done = engine.restore(&args.name, &args.backup).await;
    engine.close().await;
    done?;
    anstream::println!("{}: backup {} restored", args.name, args.backup);
    Ok(0)
}

/// Asks on the terminal; anything but `yes` is no.
fn confirm(args: &RestoreArgs) -> Result<bool, Failure> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return Err(Failure::invalid(
            "restore overwrites the service's data: confirm on a terminal, or pass --yes",
        ));
    }
    print!(
        "Restore backup {} of {}? Its data replaces what is there now. Type yes: ",
        args.backup, args.name
    );
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Failure::internal(e.to_string()))?;
    Ok(answer.trim() == "yes")
}

pub async fn snapshot(ctx: Context) -> Result<i32, Failure> {
    let engine = ctx.engine(0, &[])?;
    let done = engine.snapshot().await;
    engine.close().await;
    let mut code = 0;
    for (service, result) in done? {
        match result {
            Ok(b) => anstream::println!(
                "{service}: backup {} ({})",
                b.id,
                crate::hosting::host::human_bytes(b.size)
            ),
            Err(f) => {
                code = f.kind.exit_code();
                anstream::eprintln!("{service}: backup failed: {}", f.message);
            }
        }
    }
    Ok(code)
}
