//! How soon Verify Health sees a service that becomes healthy 300 ms after
//! it starts. The target (issue #2): within about 100 ms of that moment.
//! Run: `cargo bench --bench health_latency`. Figures go in docs/benchmarks.md.

use deployer::hosting::health::{HealthCheck, Liveness, Probe};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HEALTHY_AFTER: Duration = Duration::from_millis(300);
const RUNS: usize = 30;

/// A server that refuses connections for `refuse` (as a booting service
/// does), then answers 503 until `HEALTHY_AFTER`, then 200.
async fn service(start: Instant, refuse: Duration) -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    tokio::spawn(async move {
        tokio::time::sleep_until((start + refuse).into()).await;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf).await;
            let status = if start.elapsed() >= HEALTHY_AFTER {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            let _ = s
                .write_all(
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await;
        }
    });
    port
}

async fn measure(refuse: Duration) -> Vec<f64> {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut lateness = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let start = Instant::now();
        let port = service(start, refuse).await;
        let check = HealthCheck {
            url: format!("http://127.0.0.1:{port}/health"),
            timeout: Duration::from_secs(5),
            retries: 100,
        };
        check
            .wait(Probe::Http(&client), || async { Liveness::Alive })
            .await
            .expect("healthy");
        lateness.push((start.elapsed() - HEALTHY_AFTER).as_secs_f64() * 1000.0);
    }
    lateness.sort_by(|a, b| a.partial_cmp(b).unwrap());
    lateness
}

fn report(label: &str, l: &[f64]) {
    let pct = |p: f64| l[((l.len() - 1) as f64 * p).round() as usize];
    println!(
        "{label:<44} runs {:>3}  median {:>6.1} ms  p90 {:>6.1} ms  max {:>6.1} ms",
        l.len(),
        pct(0.5),
        pct(0.9),
        l[l.len() - 1]
    );
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    println!("Detection delay after the service turns healthy at 300 ms:");
    report("503 until 300 ms", &measure(Duration::ZERO).await);
    report(
        "refused 200 ms, then 503 until 300 ms",
        &measure(Duration::from_millis(200)).await,
    );
}
