//! Commands as data. Runtimes return [`Cmd`] values; one executor runs them
//! (on this machine, or over SSH by `ssh.rs`) and one function quotes them, so a command
//! can be shown, tested and logged without running it, and secret arguments
//! print as `***`.

use crate::support::secret::Secret;
use std::path::PathBuf;
use std::time::Duration;

/// One argument or environment value: plain, or secret.
#[derive(Clone, Debug, PartialEq)]
pub enum Arg {
    Plain(String),
    Secret(Secret),
}

impl Arg {
    fn real(&self) -> &str {
        match self {
            Arg::Plain(s) => s,
            Arg::Secret(s) => s.expose(),
        }
    }
}

/// A command to run on a target.
#[derive(Clone, Debug, PartialEq)]
pub struct Cmd {
    pub program: String,
    pub args: Vec<Arg>,
    /// Extra environment for the command itself (not inherited by services
    /// unless the command passes it on, as `docker run -e NAME` does).
    pub env: Vec<(String, Arg)>,
    pub cwd: Option<PathBuf>,
}

impl Cmd {
    pub fn new(program: impl Into<String>) -> Self {
        Cmd {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
        }
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(Arg::Plain(a.into()));
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args
            .extend(args.into_iter().map(|a| Arg::Plain(a.into())));
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), Arg::Plain(value.into())));
        self
    }

    pub fn secret_env(mut self, key: impl Into<String>, value: Secret) -> Self {
        self.env.push((key.into(), Arg::Secret(value)));
        self
    }

    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// The command as a shell line, secrets shown as `***`. Safe to print.
    pub fn display(&self) -> String {
        let mut words = vec![quote(&self.program)];
        words.extend(self.args.iter().map(|a| match a {
            Arg::Plain(s) => quote(s),
            Arg::Secret(_) => "***".to_string(),
        }));
        words.join(" ")
    }
}

/// Quotes a word for a POSIX shell: safe words stay bare, others are put in
/// single quotes with embedded quotes escaped.
pub fn quote(word: &str) -> String {
    let safe = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b));
    if safe {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r#"'\''"#))
    }
}

/// What a finished command gave back.
#[derive(Clone, Debug, PartialEq)]
pub struct CmdOutput {
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The last lines of stderr (or stdout when stderr is empty), for errors.
    pub fn tail(&self, lines: usize) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        tail_lines(text, lines)
    }
}

/// The last `n` non-empty lines of a text.
pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Why a command could not be run at all (as opposed to running and failing).
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot run `{cmd}`: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("`{cmd}` did not finish within {secs} s")]
    Timeout { cmd: String, secs: u64 },
    #[error("`{cmd}`: {reason}")]
    Remote { cmd: String, reason: String },
}

/// How much of a command's output is kept: its end.
pub const OUTPUT_CAP: usize = 1 << 20;

/// Appends output, keeping only the last [`OUTPUT_CAP`] bytes.
pub fn keep_tail(buf: &mut Vec<u8>, data: &[u8]) {
    buf.extend_from_slice(data);
    if buf.len() > OUTPUT_CAP {
        let cut = buf.len() - OUTPUT_CAP;
        buf.drain(..cut);
    }
}

/// Reads a stream to its end, keeping the tail.
async fn read_tail(stream: Option<impl tokio::io::AsyncRead + Unpin>) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut kept = Vec::new();
    let Some(mut stream) = stream else {
        return kept;
    };
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
        keep_tail(&mut kept, &buf[..n]);
    }
    kept
}

/// Where commands run: this machine ([`LocalTransport`]) or an SSH host.
pub trait Transport: Send + Sync {
    fn exec(
        &self,
        cmd: &Cmd,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<CmdOutput, ExecError>> + Send;
}

/// The only variables of deployer's own environment a command or service
/// started on this machine gets (besides its own): not deployer's tokens,
/// the registry's token or the SSH agent's socket.
pub const PASSED_ENV: [&str; 4] = ["PATH", "HOME", "LANG", "TZ"];

/// What the docker CLI also needs to find its engine, when set.
const DOCKER_ENV: [&str; 4] = [
    "DOCKER_HOST",
    "DOCKER_CONTEXT",
    "DOCKER_CONFIG",
    "DOCKER_CERT_PATH",
];

/// Runs commands on this machine, each with a clean environment:
/// [`PASSED_ENV`] and the command's own variables.
#[derive(Clone, Debug, Default)]
pub struct LocalTransport;

impl Transport for LocalTransport {
    async fn exec(&self, cmd: &Cmd, timeout: Duration) -> Result<CmdOutput, ExecError> {
        let mut command = tokio::process::Command::new(&cmd.program);
        command
            .args(cmd.args.iter().map(Arg::real))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .env_clear();
        let docker = cmd.program == "docker";
        for key in PASSED_ENV
            .iter()
            .chain(DOCKER_ENV.iter().filter(|_| docker))
        {
            if let Some(v) = std::env::var_os(key) {
                command.env(key, v);
            }
        }
        for (k, v) in &cmd.env {
            command.env(k, v.real());
        }
        if let Some(dir) = &cmd.cwd {
            command.current_dir(dir);
        }
        let spawn_error = |source| ExecError::Spawn {
            cmd: cmd.display(),
            source,
        };
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(spawn_error)?;
        let (out, err) = (child.stdout.take(), child.stderr.take());
        let run = async {
            let (stdout, stderr) = tokio::join!(read_tail(out), read_tail(err));
            child.wait().await.map(|status| (status, stdout, stderr))
        };
        // On a timeout the child is dropped, and killed with it.
        let (status, stdout, stderr) = tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| ExecError::Timeout {
                cmd: cmd.display(),
                secs: timeout.as_secs(),
            })?
            .map_err(spawn_error)?;
        Ok(CmdOutput {
            code: status.code(),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_keeps_its_last_mebibyte() {
        let mut kept = Vec::new();
        for i in 0..3u8 {
            keep_tail(&mut kept, &vec![i; OUTPUT_CAP / 2 + 1]);
        }
        assert_eq!(kept.len(), OUTPUT_CAP);
        assert_eq!(*kept.last().unwrap(), 2);
    }

    #[tokio::test]
    async fn a_command_that_runs_out_of_time_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let mark = dir.path().join("finished");
        let script = format!("sleep 1; touch {}", mark.display());
        let cmd = Cmd::new("sh").args(["-c", &script]);
        let err = LocalTransport
            .exec(&cmd, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, ExecError::Timeout { .. }), "{err}");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!mark.exists(), "the command ran on after its time");
    }

    #[test]
    fn display_quotes_and_hides_secrets() {
        let cmd = Cmd::new("docker")
            .args(["run", "-e", "GREETING=hello world", "it's"])
            .secret_env("API_KEY", Secret::new("s3cr3t"));
        assert_eq!(
            cmd.display(),
            r#"docker run -e 'GREETING=hello world' 'it'\''s'"#
        );
        let with_secret_arg = Cmd {
            args: vec![Arg::Secret(Secret::new("s3cr3t"))],
            ..Cmd::new("echo")
        };
        assert_eq!(with_secret_arg.display(), "echo ***");
    }

    #[tokio::test]
    async fn local_exec_reports_code_and_output() {
        let out = LocalTransport
            .exec(
                &Cmd::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.tail(1), "err");
    }
}
