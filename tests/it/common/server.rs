//! A real `deployer serve` on a random loopback port, and a small HTTP
//! client for talking to it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::Duration;

pub struct Server {
    pub child: Child,
    pub port: u16,
    /// The server's API token: the one it was given, or the one it made.
    pub token: String,
}

impl Server {
    /// Starts `deployer serve --port 0` in the sandbox, allowing deploys
    /// from `allow_root`, with `env` for the server process.
    pub fn start(
        sb: &super::Sandbox,
        allow_root: &std::path::Path,
        env: &[(&str, &str)],
    ) -> Server {
        let mut cmd = sb.cmd();
        cmd.args(["serve", "--port", "0", "--allow-root"])
            .arg(allow_root)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("deployer serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        let token = match env.iter().find(|(k, _)| *k == "DEPLOYER_API_TOKEN") {
            Some((_, t)) => t.to_string(),
            None => std::fs::read_to_string(sb.state_dir().join("api-token"))
                .expect("the token the server made")
                .trim()
                .to_string(),
        };
        Server { child, port, token }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Sends a request; returns the status and the body as JSON (or a JSON
    /// string when it is not JSON).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let (code, text) = request(self.port, method, path, body.map(str::as_bytes), token);
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (code, json)
    }

    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        self.call("GET", path, None, None)
    }

    /// A POST with the server's token.
    pub fn post(&self, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
        self.call("POST", path, body, Some(&self.token))
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One HTTP/1.1 request over a fresh connection.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    token: Option<&str>,
) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the server");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or(b"");
    if method != "GET" {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    // The server may answer (413) before reading a large body; ignore a
    // broken pipe then.
    let _ = s.write_all(body);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (headers, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (code, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
