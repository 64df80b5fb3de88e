//! Every way in, tried without the key: each test here is an attack that
//! must fail (docs/security.md lists them with their defences).

use crate::common::server::Server;
use crate::common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Sends raw request head lines and a body; the status code and the body.
fn raw(port: u16, head: &[&str], body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = String::new();
    for line in head {
        req.push_str(line);
        req.push_str("\r\n");
    }
    req.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (code, body.to_string())
}

#[test]
fn the_browser_and_local_user_attack_is_refused_and_runs_nothing() {
    let sb = Sandbox::new();
    let src = sb.service("hello", "v1");
    let server = Server::start(&sb, src.parent().unwrap(), &[]);
    let pwned = sb.dir.path().join("pwned");
    let name = sb.name("x");
    let attack = serde_json::json!({
        "service_path": src, "service_name": name, "service_port": free_port(),
        "build": format!("touch {}", pwned.display()), "start": "sleep 60",
        "auto_register": false,
    })
    .to_string();
    let post = "POST /deploy HTTP/1.1";
    let token = format!("Authorization: Bearer {}", server.token);
    let here = format!("Host: 127.0.0.1:{}", server.port);
    let own_origin = format!("Origin: http://127.0.0.1:{}", server.port);
    let json = "Content-Type: application/json";
    // The request exactly: no token, text/plain, foreign Host and Origin.
    let exact = [
        post,
        "Host: evil.test",
        "Origin: https://evil.test",
        "Content-Type: text/plain",
    ];
    let tries: Vec<(&str, Vec<&str>, u16)> = vec![
        ("the issue's request", exact.to_vec(), 403),
        ("no token", vec![post, &here, json], 401),
        (
            "a wrong token",
            vec![post, &here, json, "Authorization: Bearer nope"],
            401,
        ),
        (
            "text/plain with the token",
            vec![post, &here, "Content-Type: text/plain", &token],
            415,
        ),
        (
            "a form with the token",
            vec![
                post,
                &here,
                "Content-Type: application/x-www-form-urlencoded",
                &token,
            ],
            415,
        ),
        (
            "a rebound Host with the token",
            vec![post, "Host: evil.test:8007", json, &token],
            403,
        ),
        (
            "a foreign Origin with the token",
            vec![post, &here, json, &token, "Origin: https://evil.test"],
            403,
        ),
        (
            "a null Origin with the token",
            vec![post, &here, json, &token, "Origin: null"],
            403,
        ),
    ];
    for (what, head, expect) in tries {
        let (code, body) = raw(server.port, &head, &attack);
        assert_eq!(code, expect, "{what}: {body}");
        assert!(body.contains("\"error\""), "{what} says why: {body}");
    }
    // Reads from a rebound name are refused too (they would leak jobs).
    let (code, _) = raw(
        server.port,
        &["GET /deploy/history/x HTTP/1.1", "Host: evil.test"],
        "",
    );
    assert_eq!(code, 403);
    std::thread::sleep(Duration::from_millis(500));
    assert!(!pwned.exists(), "a refused request ran its build");
    assert_eq!(
        server.get(&format!("/deploy/history/{name}")).0,
        404,
        "no job was recorded"
    );

    // The owner gets in: `bearer` in any case, its own origin.
    let lower = format!("Authorization: bearer {}", server.token);
    let (code, body) = raw(
        server.port,
        &[post, &here, json, &lower, &own_origin],
        &attack,
    );
    assert_eq!(code, 202, "{body}");
    sb.track(&name);
    eventually(60, "the owner's build to run", || {
        pwned.exists().then_some(())
    });
}

#[test]
fn an_empty_or_short_token_is_refused_at_startup() {
    let sb = Sandbox::new();
    for token in ["", "short-token"] {
        let r = sb.run_within(20, &["serve", "--port", "0"], |c| {
            c.env("DEPLOYER_API_TOKEN", token);
        });
        r.assert_code(10);
        assert!(
            r.stderr.contains("shorter than 32 characters"),
            "{}",
            r.stderr
        );
    }
    let config = sb.dir.path().join("deployer.toml");
    std::fs::write(&config, "[api]\ntoken = \"\"\n").unwrap();
    let args = ["--config", config.to_str().unwrap(), "serve", "--port", "0"];
    let r = sb.run_within(20, &args, |c| {
        c.env_remove("DEPLOYER_API_TOKEN");
    });
    r.assert_code(10);
    assert!(
        r.stderr.contains("shorter than 32 characters"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_server_without_a_token_makes_one_that_only_its_owner_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new();
    let src = sb.service("hello", "v1");
    let server = Server::start(&sb, src.parent().unwrap(), &[]);
    let file = sb.state_dir().join("api-token");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(server.token.len(), 64);
    // deploy --server on the same machine finds it there.
    let name = &sb.tracked("tokenfile");
    let port = free_port().to_string();
    let r = sb.run(&[
        "deploy",
        src.to_str().unwrap(),
        "--server",
        &server.url(""),
        "--name",
        name,
        "--port",
        &port,
        "--no-register",
    ]);
    r.assert_code(0);
}

#[test]
fn a_request_cannot_name_a_secret_the_server_does_not_hand_out() {
    let sb = Sandbox::new();
    let src = sb.service("hello", "v1");
    let config = sb.dir.path().join("deployer.toml");
    std::fs::write(&config, "[api]\nsecrets = [\"API_KEY\"]\n").unwrap();
    let server = Server::start(
        &sb,
        src.parent().unwrap(),
        &[
            ("DEPLOYER_CONFIG", config.to_str().unwrap()),
            ("API_KEY", "sk-listed-value"),
            ("CLOUD_SECRET", "the-servers-own-credential"),
        ],
    );
    let name = sb.name("secretive");
    let ask = |secret: &str| {
        let body = serde_json::json!({
            "service_path": src, "service_name": name, "service_port": free_port(),
            "secrets": [secret], "auto_register": false,
        });
        server.post("/deploy", Some(&body.to_string()))
    };
    for unlisted in ["CLOUD_SECRET", "DEPLOYER_API_TOKEN", "HOME"] {
        let (code, err) = ask(unlisted);
        assert_eq!(code, 400, "{unlisted}: {err}");
        assert_eq!(err["field"], "secrets");
        assert!(
            err["error"]
                .as_str()
                .unwrap()
                .contains("not one this server hands out"),
            "{err}"
        );
    }
    assert_eq!(server.get(&format!("/deploy/history/{name}")).0, 404);
    let (code, accepted) = ask("API_KEY");
    assert_eq!(code, 202, "{accepted}");
    sb.track(&name);
}

/// Every file under `dir` whose bytes contain `needle`, except the ones
/// `allowed` says may hold it.
fn files_holding(
    dir: &std::path::Path,
    needle: &str,
    allowed: impl Fn(&std::path::Path) -> bool,
) -> Vec<std::path::PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| !allowed(p))
        .filter(|p| {
            std::fs::read(p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
        })
        .collect()
}

#[test]
fn environment_values_are_kept_out_of_the_store_answers_events_and_logs() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new();
    let src = sb.service("hello", "v1");
    let server = Server::start(&sb, src.parent().unwrap(), &[]);
    let name = sb.tracked("canary");
    let port = free_port();
    let canary = "canary-5f1c9e7a-kept-out-of-records";
    let deploy = |src: &std::path::Path| {
        let body = serde_json::json!({
            "service_path": src, "service_name": name, "service_port": port,
            "deployment_method": "process", "auto_register": false,
            "environment_vars": {"CANARY_TOKEN": canary, "MODE": "blue"},
            "build": "echo building with $CANARY_TOKEN; rustc -o hello main.rs",
        });
        let (code, a) = server.post("/deploy", Some(&body.to_string()));
        assert_eq!(code, 202, "{a}");
        a["deploy_job_id"].as_str().unwrap().to_string()
    };
    let first = deploy(&src);
    let job = eventually(60, "the first deploy", || {
        let (_, job) = server.get(&format!("/deploy/{first}"));
        (job["status"] == "completed").then_some(job)
    });
    // The service has it.
    assert_eq!(
        http_get(port, "/env/CANARY_TOKEN").map(|r| r.1).as_deref(),
        Some(canary)
    );
    // A second release, then a rollback: the first gets its values back
    // from the 0600 file on this machine.
    let second = deploy(&sb.service("hello", "v2"));
    eventually(60, "the second deploy", || {
        let (_, job) = server.get(&format!("/deploy/{second}"));
        (job["status"] == "completed").then_some(())
    });
    let (code, rb) = server.post(&format!("/deploy/{second}/rollback"), None);
    assert_eq!(code, 200, "{rb}");
    assert_eq!(version_on(port).as_deref(), Some("v1"));
    assert_eq!(
        http_get(port, "/env/CANARY_TOKEN").map(|r| r.1).as_deref(),
        Some(canary)
    );

    // No answer or event carries it.
    let mut answers = vec![job.to_string()];
    for path in [
        format!("/deploy/{first}"),
        format!("/deploy/{second}"),
        format!("/deploy/history/{name}"),
        format!("/deploy/{first}/events"),
        "/registry".to_string(),
        "/state".to_string(),
    ] {
        answers.push(crate::common::server::request(server.port, "GET", &path, None, None).1);
    }
    for a in &answers {
        assert!(!a.contains(canary), "an answer holds the value: {a}");
    }
    // On disk, only the per-release values file (mode 0600) and the
    // service's own log hold it: not the database, not the job records.
    let state = sb.state_dir();
    let holders = files_holding(&state, canary, |p| {
        p.components()
            .any(|c| c.as_os_str() == "env" || c.as_os_str() == "logs")
    });
    assert_eq!(
        holders,
        Vec::<std::path::PathBuf>::new(),
        "files holding the value"
    );
    let values = files_under(&state)
        .into_iter()
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && p.parent().is_some_and(|d| d.ends_with("env"))
        })
        .collect::<Vec<_>>();
    assert!(!values.is_empty());
    for f in values {
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600,
            "{}",
            f.display()
        );
    }
}

#[test]
fn a_build_and_the_service_see_none_of_deployers_own_secrets() {
    let sb = Sandbox::new();
    let src = sb.service("hello", "v1");
    let name = &sb.tracked("cleanenv");
    let port = free_port();
    let tokens = [
        ("DEPLOYER_API_TOKEN", "api-token-5d0e7c1f9a2b4e6d8c3a1f0e"),
        ("REGISTRY_TOKEN", "registry-token-8e2f4a6c0b1d3e5f7a9c"),
        ("SSH_AUTH_SOCK", "/tmp/agent-socket-4b6d8f0a2c4e"),
        ("AWS_SECRET_ACCESS_KEY", "aws-secret-1a3c5e7g9i2k4m6o"),
    ];
    let r = sb.run_with(
        &[
            "deploy",
            src.to_str().unwrap(),
            "--name",
            name,
            "--port",
            &port.to_string(),
            "--no-register",
            "--env",
            "MODE=green",
            "--build",
            "env > build-env.txt && rustc -o hello main.rs",
        ],
        |c| {
            c.envs(tokens);
        },
    );
    r.assert_code(0);
    let current = sb.current(name).expect("a current release");
    let seen = std::fs::read_to_string(
        sb.state_dir()
            .join("services")
            .join(name)
            .join("releases")
            .join(&current)
            .join("build-env.txt"),
    )
    .unwrap();
    assert!(seen.contains("MODE=green"), "{seen}");
    assert!(seen.contains("PATH="), "{seen}");
    for (k, v) in tokens {
        assert!(
            !seen.contains(k) && !seen.contains(v),
            "the build saw {k}:\n{seen}"
        );
        let got = http_get(port, &format!("/env/{k}")).map(|r| r.0);
        assert_ne!(got, Some(200), "the service sees {k}");
    }
}

/// Sets this process's soft limit on open files (children inherit it):
/// `None` raises it to the hard limit.
fn open_files_limit(soft: Option<u64>) {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = soft.unwrap_or(lim.rlim_max).min(lim.rlim_max);
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

#[test]
fn two_thousand_idle_sockets_do_not_stop_the_server_answering() {
    let sb = Sandbox::new();
    let src = sb.service("hello", "v1");
    // The server starts with the usual default of 1,024 open files (and
    // must raise its own limit); this test then takes what it needs.
    open_files_limit(Some(1024));
    let server = Server::start(&sb, src.parent().unwrap(), &[]);
    open_files_limit(None);
    let mut idle = Vec::new();
    for _ in 0..2000 {
        let s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        idle.push(s);
    }
    // A slowloris: half a request line, then nothing.
    let mut slow = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    let t = std::time::Instant::now();
    let (code, body) = server.get("/health");
    assert_eq!(code, 200, "{body}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    // The idle ones are closed after the header timeout.
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 64];
    let closed = slow.read(&mut buf);
    assert!(
        matches!(closed, Ok(0)) || closed.is_err() || String::from_utf8_lossy(&buf).contains("408"),
        "the slow client is cut off: {closed:?}"
    );
    drop(idle);
}

#[test]
fn deployers_state_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new();
    let src = sb.service("hello", "v1");
    let name = &sb.tracked("private");
    sb.deploy(
        &src,
        name,
        free_port(),
        "process",
        &["--env", "DB_PASSWORD=hunter2-long-value"],
    )
    .assert_code(0);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let state = sb.state_dir();
    assert_eq!(mode(&state), 0o700, "the state directory");
    let service = state.join("services").join(name);
    let mut private: Vec<std::path::PathBuf> =
        ["deployer.db", "deployer.db-wal", "deployer.db-shm"]
            .iter()
            .map(|f| state.join(f))
            .filter(|p| p.exists())
            .collect();
    private.push(service.join("deploy.lock"));
    for dir in ["logs", "run", "env"] {
        let files: Vec<_> = files_under(&service.join(dir));
        assert!(!files.is_empty(), "{dir} has files");
        private.extend(files);
    }
    assert!(private.iter().any(|p| p.ends_with("deployer.db")));
    for p in private {
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
}

/// A server that answers every request with a redirect to `to`.
fn redirector(to: String) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    port
}

#[test]
fn the_registry_health_check_follows_no_redirect_and_messages_cannot_pick_their_actor() {
    let sb = Sandbox::new();
    let src = sb.service("hello", "v1");
    let server = Server::start(&sb, src.parent().unwrap(), &[]);
    let inside = FakeRegistry::start(200);
    let hop = redirector(format!("http://127.0.0.1:{}/secret", inside.port));
    for endpoint in [
        format!("http://127.0.0.1:{hop}"),
        format!("http://127.0.0.1:{}/secret?x=", inside.port),
    ] {
        let reg =
            serde_json::json!({"droplet_id": 9, "service_name": "probe", "endpoint": endpoint});
        let (code, body) = server.post("/register", Some(&reg.to_string()));
        assert_eq!(code, 200, "{body}");
        let (code, health) = server.get("/registry/probe/health");
        assert_eq!(code, 200, "{health}");
        assert!(
            health["url"].as_str().unwrap().ends_with("/health"),
            "{health}"
        );
    }
    let hits: Vec<String> = inside
        .bodies
        .lock()
        .unwrap()
        .iter()
        .map(|(p, _)| p.clone())
        .collect();
    assert!(
        !hits.iter().any(|p| p == "/secret"),
        "the redirect was followed: {hits:?}"
    );
    assert!(hits.iter().all(|p| p.ends_with("/health")), "{hits:?}");

    // A message naming its own sender, with a terminal escape sequence.
    let msg =
        serde_json::json!({"from": "admin\u{1b}[2J\u{1b}]0;owned\u{7}", "text": "hi \u{1b}[31m"});
    let (code, ack) = server.post("/message", Some(&msg.to_string()));
    assert_eq!(code, 200, "{ack}");
    let audit = sb.run(&["audit"]);
    let line = audit
        .stdout
        .lines()
        .find(|l| l.contains("message"))
        .unwrap_or_default()
        .to_string();
    assert!(line.contains("api (token holder)"), "{}", audit.stdout);
    assert!(
        !audit.stdout.contains('\u{1b}') && !audit.stdout.contains('\u{7}'),
        "{:?}",
        audit.stdout
    );
}

#[test]
fn deploys_queued_behind_one_service_leave_the_others_running_and_the_queue_is_bounded() {
    let sb = Sandbox::new();
    let src = sb.service("hello", "v1");
    let config = sb.dir.path().join("deployer.toml");
    std::fs::write(&config, "[api]\nworkers = 2\nmax_queued = 6\n").unwrap();
    let server = Server::start(
        &sb,
        src.parent().unwrap(),
        &[("DEPLOYER_CONFIG", config.to_str().unwrap())],
    );
    let (busy, other) = (sb.tracked("busy"), sb.tracked("other"));
    let (busy_port, other_port) = (free_port(), free_port());
    let submit = |name: &str, port: u16, build: &str| {
        let body = serde_json::json!({
            "service_path": src, "service_name": name, "service_port": port,
            "deployment_method": "process", "auto_register": false, "build": build,
        });
        server.post("/deploy", Some(&body.to_string()))
    };
    let slow = "sleep 20 && rustc -o hello main.rs";
    let queued: Vec<String> = (0..4)
        .map(|_| {
            let (code, a) = submit(&busy, busy_port, slow);
            assert_eq!(code, 202, "{a}");
            a["deploy_job_id"].as_str().unwrap().to_string()
        })
        .collect();
    let (code, a) = submit(&other, other_port, "rustc -o hello main.rs");
    assert_eq!(code, 202, "{a}");
    let id = a["deploy_job_id"].as_str().unwrap().to_string();
    let t = std::time::Instant::now();
    eventually(15, "the other service's deploy", || {
        let (_, job) = server.get(&format!("/deploy/{id}"));
        (job["status"] == "completed").then_some(())
    });
    assert!(t.elapsed() < Duration::from_secs(15));
    let waiting = queued
        .iter()
        .filter(|id| server.get(&format!("/deploy/{id}")).1["status"] == "pending")
        .count();
    assert!(
        waiting >= 3,
        "the busy service's later jobs still wait: {waiting}"
    );

    // Four waiting, two more fill the queue; the next is refused.
    for _ in 0..2 {
        assert_eq!(submit(&busy, busy_port, slow).0, 202);
    }
    let (code, err) = submit(&busy, busy_port, slow);
    assert_eq!(code, 429, "{err}");
    assert!(
        err["error"].as_str().unwrap().contains("try again later"),
        "{err}"
    );
}
