//! The dashboard in a real browser: Debian's headless Chromium driven
//! through chromedriver (WebDriver, with fantoccini) against a real
//! `deployer serve`. Screenshots of each page go to the target directory
//! (`dashboard-*.png`) to be looked at.

use crate::common::server::Server;
use crate::common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "dashboard-test-token-0123456789abcdef0123";

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// chromedriver on a free port, or None (the test is skipped) when the
/// browser is not installed and not required.
fn chromedriver() -> Option<(Driver, u16)> {
    let here = |p: &str| std::path::Path::new(p).exists();
    if !here("/usr/bin/chromedriver") || !here("/usr/bin/chromium") {
        assert!(
            std::env::var("DEPLOYER_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "DEPLOYER_REQUIRE_BROWSER=1 but chromium or chromedriver is missing"
        );
        skipped("no chromium/chromedriver (apt-get install chromium chromium-driver)");
        return None;
    }
    let port = free_port();
    let child = Command::new("/usr/bin/chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver");
    let driver = Driver(child);
    eventually(20, "chromedriver answers", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    Some((driver, port))
}

async fn browser(driver_port: u16, profile: &std::path::Path) -> Client {
    // deployer's own choice of TLS provider (none is used: WebDriver is HTTP).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--window-size=1200,900", format!("--user-data-dir={}", profile.display())],
        }),
    );
    ClientBuilder::rustls()
        .expect("rustls")
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{driver_port}"))
        .await
        .expect("a browser session")
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    let path =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("dashboard-{name}.png"));
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
}

/// The page's main text, once the page has one (a click's navigation may
/// still be under way).
async fn text(c: &Client) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(main) = c.find(Locator::Css("main")).await
            && let Ok(t) = main.text().await
        {
            return t;
        }
        assert!(Instant::now() < deadline, "no <main> within 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Types a token into the login page and sends it.
async fn log_in(c: &Client, token: &str) {
    let field = c.find(Locator::Css("#token")).await.unwrap();
    field.send_keys(token).await.unwrap();
    let send = c.find(Locator::Css("button[type=submit]")).await.unwrap();
    send.click().await.unwrap();
}

/// Waits until `css` matches, without reloading the page.
async fn until(c: &Client, secs: u64, css: &str) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while c.find(Locator::Css(css)).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "{css} within {secs} s:\n{}",
            text(c).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A page on another origin (another port of this host) whose form posts
/// to the dashboard when opened.
fn evil_page(target: String) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let body = format!(
                "<!DOCTYPE html><form id=f method=post action=\"{target}\"><input name=csrf value=x></form>\
                 <script>document.getElementById('f').submit()</script>"
            );
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

fn deploy(server: &Server, src: &std::path::Path, name: &str, port: u16) -> String {
    let body = serde_json::json!({
        "service_path": src, "service_name": name, "service_port": port, "droplet_id": 7,
    });
    let (code, accepted) = server.post("/deploy", Some(&body.to_string()));
    assert_eq!(code, 202, "{accepted}");
    accepted["deploy_job_id"].as_str().unwrap().to_string()
}

fn wait_done(server: &Server, id: &str) -> serde_json::Value {
    eventually(60, "the job ends", || {
        let (_, job) = server.get(&format!("/deploy/{id}"));
        (job["status"] != "pending" && job["status"] != "running").then_some(job)
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_in_a_real_browser() {
    let Some((_driver, driver_port)) = chromedriver() else {
        return;
    };
    let sb = Sandbox::new();
    let name = &sb.tracked("dash");
    let port = free_port();
    let server = Server::start(&sb, sb.dir.path(), &[("DEPLOYER_API_TOKEN", TOKEN)]);
    let v1 = wait_done(
        &server,
        &deploy(&server, &sb.service("hello", "v1"), name, port),
    );
    assert_eq!(v1["status"], "completed", "{v1}");
    let c = browser(driver_port, &sb.dir.path().join("chromium")).await;
    let url = |p: &str| server.url(p);

    // Without a session every page goes to the login page.
    for page in [
        "/",
        "/hosts",
        &format!("/s/{name}"),
        &format!("/jobs/{}", v1["deploy_job_id"].as_str().unwrap()),
    ] {
        c.goto(&url(page)).await.unwrap();
        assert!(
            c.current_url().await.unwrap().as_str().ends_with("/login"),
            "{page}"
        );
    }
    shot(&c, "login").await;
    // A wrong token is refused.
    log_in(&c, "not-the-token-at-all").await;
    until(&c, 10, "p.error").await;
    assert!(text(&c).await.contains("That is not the server's token."));
    c.goto(&url("/")).await.unwrap();
    assert!(c.current_url().await.unwrap().as_str().ends_with("/login"));
    // The right one: the services page lists the service.
    log_in(&c, TOKEN).await;
    until(&c, 10, &format!("a[href='/s/{name}']")).await;
    let services = text(&c).await;
    assert!(
        services.contains(name.as_str()) && services.contains("healthy"),
        "{services}"
    );
    shot(&c, "services").await;
    let cookie = c.get_named_cookie("deployer_session").await.unwrap();
    assert_eq!(cookie.http_only(), Some(true));

    // A deploy started through the API, watched live on its job page: a
    // marker set in the page survives, so the page never reloaded.
    let mut v2src = sb.service("hello", "v2");
    // The last table of hello's manifest is [env].
    add_to_manifest(&v2src, "WARMUP_SECS = \"2\"\n");
    v2src = v2src.canonicalize().unwrap();
    let id = deploy(&server, &v2src, name, port);
    c.goto(&url(&format!("/jobs/{id}"))).await.unwrap();
    c.execute("window.deployerMarker = 42", vec![])
        .await
        .unwrap();
    let at_load = c
        .find(Locator::Css("#job-status"))
        .await
        .unwrap()
        .attr("data-status")
        .await
        .unwrap();
    assert!(
        matches!(at_load.as_deref(), Some("pending" | "running")),
        "the page came while the job ran: {at_load:?}"
    );
    shot(&c, "job-running").await;
    until(
        &c,
        60,
        "tr.phase[data-phase='Verify Health'][data-status='success']",
    )
    .await;
    until(&c, 30, "#job-status[data-status='completed']").await;
    let marker = c
        .execute("return window.deployerMarker", vec![])
        .await
        .unwrap();
    assert_eq!(
        marker,
        serde_json::json!(42),
        "the job page was not reloaded"
    );
    shot(&c, "job-done").await;
    // Readable in a narrow window: nothing wider than the page but tables,
    // which scroll on their own.
    c.set_window_size(400, 800).await.unwrap();
    let wide = c
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        wide,
        serde_json::json!(true),
        "the page scrolls sideways at 400 px"
    );
    shot(&c, "job-narrow").await;
    c.set_window_size(1200, 900).await.unwrap();
    assert_eq!(version_on(port).as_deref(), Some("v2"));

    // Roll back from the service page, after confirming: v1 answers.
    c.goto(&url(&format!("/s/{name}"))).await.unwrap();
    shot(&c, "service").await;
    c.find(Locator::LinkText("Roll back to this release"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(&c, 10, "#confirm").await;
    assert!(
        text(&c)
            .await
            .contains(&format!("Roll {name} back to release"))
    );
    shot(&c, "confirm").await;
    c.find(Locator::Css("#confirm"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(&c, 60, "#job-status[data-status='completed']").await;
    assert!(text(&c).await.contains("rollback of"), "{}", text(&c).await);
    assert_eq!(version_on(port).as_deref(), Some("v1"));

    // The hosts page.
    c.goto(&url("/hosts")).await.unwrap();
    assert!(text(&c).await.contains("local"));
    shot(&c, "hosts").await;

    // A form posted from another origin, with the session's cookie: refused.
    let evil = evil_page(url(&format!("/s/{name}/stop")));
    c.goto(&format!("http://127.0.0.1:{evil}/")).await.unwrap();
    until(&c, 10, "main").await;
    assert!(
        text(&c).await.contains("cross-origin requests are refused"),
        "{}",
        text(&c).await
    );
    assert_eq!(version_on(port).as_deref(), Some("v1"), "not stopped");
    // And from the right origin without the CSRF token: refused too.
    let (code, body) = raw_post(
        server.port,
        &format!("/s/{name}/stop"),
        cookie.value(),
        "csrf=wrong",
    );
    assert_eq!(code, 403, "{body}");
    assert_eq!(version_on(port).as_deref(), Some("v1"), "not stopped");
    c.close().await.unwrap();
}

/// A form POST with a session cookie, as a page of this origin would send.
fn raw_post(port: u16, path: &str, session: &str, body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: deployer_session={session}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}
