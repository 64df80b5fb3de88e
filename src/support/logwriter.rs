//! `deployer log-writer FILE` (hidden): what a process-method service's
//! output goes through. It appends each line to FILE (mode 0600), after
//! the time it came (RFC 3339, UTC, as `logs --since` reads it), and, when
//! FILE passes `max_bytes`, rotates it (FILE.1, FILE.2, … up to `keep`), so
//! a chatty service never fills the disk. It ends when the service closes
//! its output (exits or is stopped).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

/// Default size at which a process's log is rotated.
pub const MAX_BYTES: u64 = 10 << 20;
/// Rotated files kept.
pub const KEEP: usize = 3;
/// Bytes a line's time adds.
const STAMP: u64 = 25;
/// The longest line written as one (longer ones are split).
const MAX_LINE: u64 = 64 << 10;

fn open(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Moves FILE to FILE.1 (FILE.1 to FILE.2, …; the oldest goes).
fn rotate(path: &Path, keep: usize) -> std::io::Result<()> {
    for n in (1..keep).rev() {
        let from = rotated(path, n);
        if from.exists() {
            std::fs::rename(&from, rotated(path, n + 1))?;
        }
    }
    if keep == 0 {
        std::fs::remove_file(path)
    } else {
        std::fs::rename(path, rotated(path, 1))
    }
}

/// Copies `input` to `path` line by line, rotating by size.
pub fn run(
    input: impl std::io::Read,
    path: &Path,
    max_bytes: u64,
    keep: usize,
) -> std::io::Result<()> {
    let mut input = std::io::BufReader::new(input);
    let mut file = open(path)?;
    let mut size = file.metadata()?.len();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = std::io::Read::take(&mut input, MAX_LINE).read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        if size > 0 && size + n as u64 + STAMP > max_bytes {
            file.flush()?;
            rotate(path, keep)?;
            file = open(path)?;
            size = 0;
        }
        let stamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        file.write_all(stamp.as_bytes())?;
        file.write_all(b" ")?;
        file.write_all(&line)?;
        size += (stamp.len() + 1 + n) as u64;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_log_past_its_size_is_rotated_and_the_oldest_goes() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("r.log");
        let text: String = (0..100).map(|i| format!("line {i:03}\n")).collect();
        super::run(text.as_bytes(), &log, 200, 2).unwrap();
        let current = std::fs::read_to_string(&log).unwrap();
        assert!(current.ends_with("line 099\n"), "{current}");
        assert!(current.len() <= 200);
        let one = std::fs::read_to_string(dir.path().join("r.log.1")).unwrap();
        let year = chrono::Utc::now().format("%Y-").to_string();
        assert!(
            one.lines()
                .all(|l| l.starts_with(&year) && l[24..].starts_with(" line ")),
            "whole lines, each with its time: {one}"
        );
        assert!(dir.path().join("r.log.2").exists());
        assert!(!dir.path().join("r.log.3").exists(), "only two kept");
    }
}
