//! A steady stream of requests, one after another, every answer kept: the
//! load under which zero-downtime deploys must drop nothing.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// What one request through the proxy got: the status and body, or the
/// connection error.
pub type Answer = Result<(u16, String), String>;

pub fn get(port: u16) -> Answer {
    get_for(port, "localhost")
}

/// A request with its Host header naming `host`.
pub fn get_for(port: u16, host: &str) -> Answer {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let request = format!("GET /version HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status in {text:?}"))?;
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or("")
        .trim()
        .to_string();
    Ok((status, body))
}

/// A load generator: one request after another through the proxy, until
/// stopped; every answer kept.
pub struct Load {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Answer>>,
}

impl Load {
    pub fn start(port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut answers = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                answers.push(get(port));
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            answers
        });
        Load { stop, thread }
    }

    pub fn finish(self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// The answers that were not 200, as the assertion shows them.
pub fn failures(answers: &[Answer]) -> Vec<&Answer> {
    answers
        .iter()
        .filter(|a| !matches!(a, Ok((200, _))))
        .collect()
}

/// Every answer was a 200, and there were more than `at_least` of them.
#[track_caller]
pub fn assert_none_failed(answers: &[Answer], at_least: usize) {
    let failed = failures(answers);
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        answers.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(
        answers.len() > at_least,
        "a steady stream: {} requests",
        answers.len()
    );
}
