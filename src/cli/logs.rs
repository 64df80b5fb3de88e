//! `deployer logs NAME [-n N] [-f]`: the current release's log on each
//! host (its log file, `docker logs` or the unit's journal), each line
//! prefixed with its host when there are several.

use super::Context;
use crate::error::Failure;

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
        let logs = engine.logs(&args.name, window).await?;
        let several = logs.len() > 1;
        for (i, (host, text)) in logs.iter().enumerate() {
            // Following: only what was not printed yet.
            let new = match seen.get(i) {
                Some(before) if !first => new_lines(before, text),
                _ => text.clone(),
            };
            for line in crate::output::printable(&new).lines() {
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
