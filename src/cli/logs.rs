//! `deployer logs NAME [-n N] [-f] [--since T]`: the current release's log
//! on each of the service's hosts (its log file, `docker logs` or the
//! unit's journal), each line prefixed with its host when there are
//! several.

use super::Context;
use crate::support::error::Failure;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The service.
    pub name: String,
    /// How many lines, from the end.
    #[arg(short = 'n', long, default_value_t = 50)]
    pub lines: usize,
    /// Keep printing new lines as they come (every second), until Ctrl-C.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only lines from this time on: 10m, 2h, 1d (ago), or a UTC time
    /// (2026-11-25 14:00, RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = parse_since)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
}

/// A `--since` value: an age (`30s`, `10m`, `2h`, `1d`) or a UTC time.
/// A `--since` value that is neither an age nor a time.
#[derive(Debug, thiserror::Error)]
#[error("'{0}' is not a time: use an age (10m, 2h, 1d) or a UTC time (2026-11-25 14:00)")]
pub struct NotATime(String);

fn parse_since(s: &str) -> Result<chrono::DateTime<chrono::Utc>, NotATime> {
    use chrono::{NaiveDate, NaiveDateTime, Utc};
    let t = s.trim();
    if let Some(unit) = t.chars().last().filter(|c| "smhd".contains(*c))
        && let Ok(n) = t[..t.len() - 1].parse::<i64>()
    {
        let secs = n * match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => 86_400,
        };
        return Ok(Utc::now() - chrono::Duration::seconds(secs));
    }
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(t) {
        return Ok(at.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M"] {
        if let Ok(at) = NaiveDateTime::parse_from_str(t, format) {
            return Ok(at.and_utc());
        }
    }
    if let Ok(day) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Ok(day.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc());
    }
    Err(NotATime(s.to_string()))
}

/// How many lines a follow looks back each second to find where it was.
const FOLLOW_WINDOW: usize = 1000;

/// The lines of `now` that come after what `before` showed: `before`'s
/// longest tail that `now` starts with is skipped (the window rolls as
/// lines are added).
fn new_lines(before: &str, now: &str) -> String {
    let old: Vec<&str> = before.lines().collect();
    let cur: Vec<&str> = now.lines().collect();
    for start in 0..old.len() {
        let tail = &old[start..];
        if cur.len() >= tail.len() && cur[..tail.len()] == *tail {
            return cur[tail.len()..].iter().map(|l| format!("{l}\n")).collect();
        }
    }
    now.to_string()
}

pub async fn run(ctx: Context, args: Args) -> Result<i32, Failure> {
    let engine = ctx.engine(0, &[])?;
    let mut seen: Vec<String> = Vec::new();
    let mut first = true;
    loop {
        let window = if first {
            args.lines.max(1)
        } else {
            FOLLOW_WINDOW
        };
        let query = crate::engine::LogQuery {
            lines: window,
            since: if first { args.since } else { None },
        };
        let logs = engine.logs(&args.name, query).await?;
        let several = logs.len() > 1;
        for (i, (host, text)) in logs.iter().enumerate() {
            // Following: only what was not printed yet.
            let new = match seen.get(i) {
                Some(before) if !first => new_lines(before, text),
                _ => text.clone(),
            };
            for line in crate::render::output::printable(&new).lines() {
                if several {
                    anstream::println!("[{host}] {line}");
                } else {
                    anstream::println!("{line}");
                }
            }
            if seen.len() <= i {
                seen.push(String::new());
            }
            seen[i] = text.clone();
        }
        if !args.follow {
            break;
        }
        first = false;
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    engine.close().await;
    Ok(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn following_prints_only_what_is_new_even_as_the_window_rolls() {
        assert_eq!(super::new_lines("a\nb\n", "a\nb\nc\n"), "c\n");
        assert_eq!(super::new_lines("a\nb\nc\n", "b\nc\nd\ne\n"), "d\ne\n");
        assert_eq!(super::new_lines("x\ny\n", "x\ny\nx\ny\n"), "x\ny\n");
        assert_eq!(super::new_lines("a\n", "a\n"), "");
    }
}
