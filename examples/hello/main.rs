//! hello: the example service deployer ships. A static binary with no
//! dependencies, so it runs as a plain process and in a `FROM scratch` image.
//!
//! It listens on `$PORT` and answers:
//! - `GET /health`  → 200 `{"status":"healthy","version":…}`
//! - `GET /version` → the contents of `VERSION`, baked in at build time
//! - `GET /env/NAME` → the value of environment variable NAME (lets tests see
//!   that configured variables reach the service)
//!
//! With `WARMUP_SECS=N`, `/health` answers 503 for the first N seconds.
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};

const VERSION: &str = include_str!("VERSION");

fn main() {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8090".to_string());
    let listener = match TcpListener::bind(format!("0.0.0.0:{port}")) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("hello: cannot listen on port {port}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("hello {} listening on port {port}", VERSION.trim());
    // WARMUP_SECS: /health answers 503 for that long after start, like a
    // service loading a model or warming a cache.
    let warm_at = std::time::Instant::now()
        + std::time::Duration::from_secs(
            std::env::var("WARMUP_SECS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
        );
    for stream in listener.incoming().flatten() {
        let warm = std::time::Instant::now() >= warm_at;
        std::thread::spawn(move || answer(stream, warm));
    }
}

fn answer(mut stream: TcpStream, warm: bool) {
    let mut line = String::new();
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let version = VERSION.trim();
    let (status, body) = match path.as_str() {
        "/health" if !warm => ("503 Service Unavailable", "warming up\n".to_string()),
        "/health" => (
            "200 OK",
            format!("{{\"status\":\"healthy\",\"version\":\"{version}\"}}\n"),
        ),
        "/version" => ("200 OK", format!("{version}\n")),
        p if p.starts_with("/env/") => match std::env::var(&p[5..]) {
            Ok(v) => ("200 OK", v),
            Err(_) => ("404 Not Found", String::new()),
        },
        _ => ("404 Not Found", "not found\n".to_string()),
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}
