//! Every way in, tried without the key: each test here is an attack that
//! must fail (docs/security.md lists them with their defences).

mod common;
use common::server::Server;
use common::*;
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
            err["error"].as_str().unwrap().contains("not one this server hands out"),
            "{err}"
        );
    }
    assert_eq!(server.get(&format!("/deploy/history/{name}")).0, 404);
    let (code, accepted) = ask("API_KEY");
    assert_eq!(code, 202, "{accepted}");
    sb.track(&name);
}
