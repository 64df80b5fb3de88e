//! The report step against a Bot API stand-in on loopback inside the test
//! (no Docker, no SSH, nothing leaves the machine).

use super::*;
use crate::engine::{Engine, Quiet};
use crate::model::{JobKind, JobState};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Answers one request with 200 and hands back what it received.
async fn bot_api() -> (String, tokio::task::JoinHandle<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let got = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 8192];
        while !String::from_utf8_lossy(&seen).contains("\"chat_id\"") {
            let n = conn.read(&mut buf).await.unwrap();
            seen.extend_from_slice(&buf[..n]);
        }
        let ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
        conn.write_all(ok.as_bytes()).await.unwrap();
        String::from_utf8_lossy(&seen).into_owned()
    });
    (url, got)
}

fn engine(dir: &std::path::Path, notify: &str) -> Engine {
    let _ = rustls::crypto::ring::default_provider().install_default();
    std::fs::write(dir.join("secrets"), "BOT_TOKEN=123:SECRET\n").unwrap();
    let text = format!(
        "secrets_file = {:?}\n{notify}",
        dir.join("secrets").display().to_string()
    );
    let config = toml::from_str(&text).unwrap();
    Engine::new(config, dir.to_path_buf(), Duration::ZERO, Vec::new())
}

fn finished_job() -> Job {
    let mut job = Job::pending("job-1".into(), JobKind::Deploy, "web".into(), "ops".into());
    job.release = Some("r-2".into());
    job.state = JobState::Completed {
        completed_at: chrono::Utc::now(),
    };
    job
}

fn work() -> crate::engine::Work {
    let dir = std::path::Path::new("/nonexistent");
    crate::engine::Work::example("web", dir)
}

#[tokio::test]
async fn the_report_reaches_the_chat_and_the_job_records_it() {
    let (url, got) = bot_api().await;
    let dir = tempfile::tempdir().unwrap();
    let notify = format!(
        "[[notify]]\nkind = \"telegram\"\nurl = \"{url}\"\nchat_id = \"42\"\n\
         token_secret = \"BOT_TOKEN\"\nreport = true\n"
    );
    let engine = engine(dir.path(), &notify);
    let work = work();
    let mut cx = JobCx::new(&engine, &Quiet, &work, finished_job());
    assert_eq!(TelegramReport.skip(&cx), None);
    let done = TelegramReport.run(&mut cx).await.ok().unwrap();
    assert_eq!(done.details, "report posted to 1 of 1 chats");
    let request = got.await.unwrap();
    assert!(
        request.starts_with("POST /bot123:SECRET/sendMessage"),
        "{request}"
    );
    assert!(request.contains("\"chat_id\":\"42\""), "{request}");
    assert!(request.contains("deploy of web"), "the report: {request}");
    assert!(request.contains("outcome: succeeded: release r-2 is current"));
    assert!(
        !request.contains('\u{1b}'),
        "no terminal colours: {request}"
    );
    let sent = &cx.job.notifications[0];
    assert_eq!(
        (sent.kind.as_str(), sent.event.as_str()),
        ("telegram", "report")
    );
    assert!(sent.delivered);
}

#[tokio::test]
async fn without_a_chat_that_wants_reports_the_step_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let notify =
        "[[notify]]\nkind = \"telegram\"\nchat_id = \"42\"\ntoken_secret = \"BOT_TOKEN\"\n";
    let engine = engine(dir.path(), notify);
    let work = work();
    let cx = JobCx::new(&engine, &Quiet, &work, finished_job());
    let why = TelegramReport.skip(&cx).unwrap();
    assert!(why.contains("report = true"), "{why}");
}

#[test]
fn a_long_report_is_cut_to_what_telegram_takes() {
    let mut job = finished_job();
    job.service_name = "x".repeat(10_000);
    let secret = crate::support::secret::Secret::new("s3cret-value-42");
    let redactor = Redactor::for_job([&secret], std::iter::empty());
    job.actor = format!("{}s3cret-value-42", "x".repeat(4080));
    let text = message(&job, &redactor);
    assert_eq!(text.chars().count(), LIMIT);
    assert!(
        !text.contains("s3cret"),
        "a secret cut in two is still hidden"
    );
}
