//! The seed's `.env` file: `KEY=VALUE` lines that deployer reads for its
//! own settings (SERVER_HOST, REGISTRY_URL, … the keys of the
//! configuration reference's environment table), below the real
//! environment and the flags. Secrets never come from it; `secrets_file`
//! is for them.

use std::collections::BTreeMap;
use std::path::Path;

/// Reads `path` when it exists; a file that exists but cannot be read is
/// an error that names it.
pub fn load(path: &Path) -> Result<BTreeMap<String, String>, Unreadable> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(parse(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(source) => Err(Unreadable {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A `.env` file that exists and cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct Unreadable {
    path: std::path::PathBuf,
    source: std::io::Error,
}

/// `KEY=VALUE` lines; `export` before a key, blank lines and `#` comments
/// (whole lines, or after a space in an unquoted value) are allowed;
/// quotes around a value are taken off.
pub fn parse(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let value = value.trim();
        let value = match value.chars().next() {
            Some(q @ ('"' | '\'')) => value[1..].split(q).next().unwrap_or("").to_string(),
            _ => match value.find(" #").or_else(|| value.find("\t#")) {
                Some(i) => value[..i].trim_end().to_string(),
                None => value.to_string(),
            },
        };
        out.insert(key.to_string(), value);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_seeds_env_file_reads_as_written() {
        let env = super::parse(
            "# Service\nSERVICE_PORT=8007\n\nexport SERVER_HOST=198.51.100.7\n\
             DEPLOYMENT_METHOD=docker  # or systemd\nREGISTRY_URL=\"http://h:8000\"\n\
             bad line\nNAME='a # b'\n",
        );
        assert_eq!(env["SERVICE_PORT"], "8007");
        assert_eq!(env["SERVER_HOST"], "198.51.100.7");
        assert_eq!(env["DEPLOYMENT_METHOD"], "docker");
        assert_eq!(env["REGISTRY_URL"], "http://h:8000");
        assert_eq!(env["NAME"], "a # b");
        assert_eq!(env.len(), 5);
    }
}
