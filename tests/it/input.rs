//! Bad input: a clear error, a non-zero exit, and nothing changed on disk.

use crate::common::*;

/// Runs a deploy that must be refused with exit 10 and a message containing
/// `expect`, and checks the state directory is exactly as before.
#[track_caller]
fn refused(sb: &Sandbox, args: &[&str], expect: &str) {
    let before = sb.snapshot();
    let r = sb.run(args);
    r.assert_code(10);
    assert!(
        r.stderr.contains(expect),
        "expected {expect:?} in:\n{}",
        r.stderr
    );
    assert_eq!(sb.snapshot(), before, "state changed on disk");
}

#[test]
fn bad_input_is_refused_before_anything_is_written() {
    let sb = Sandbox::new();
    let web = &sb.name("web");
    let port = free_port();
    let src = sb.service("hello", "v1");
    let p = src.to_str().unwrap();

    // With no state at all, nothing is even created.
    refused(
        &sb,
        &["deploy", "/no/such/dir", "--name", web, "--port", "8090"],
        "service path /no/such/dir does not exist",
    );
    assert!(!sb.state_dir().exists());

    // A working service first, so "nothing changed" means something.
    sb.deploy(&src, web, port, "process", &[]).assert_code(0);
    let port_s = port.to_string();
    refused(
        &sb,
        &["deploy", p, "--name", "../etc", "--port", &port_s],
        "invalid service name '../etc'",
    );
    refused(
        &sb,
        &["deploy", p, "--name", "a/../../b", "--port", &port_s],
        "invalid service name",
    );
    refused(
        &sb,
        &["deploy", p, "--name", web, "--port", "0"],
        "port 0 is not a valid service port",
    );
    refused(
        &sb,
        &["deploy", p, "--name", web, "--port", "70000"],
        "invalid value '70000' for '--port <PORT>'",
    );
    refused(
        &sb,
        &[
            "deploy", p, "--name", web, "--port", &port_s, "--method", "ftp",
        ],
        "unknown deployment method 'ftp'",
    );
    refused(
        &sb,
        &[
            "deploy", p, "--name", web, "--port", &port_s, "--env", "PORT=1",
        ],
        "PORT is set by deployer itself",
    );
    refused(
        &sb,
        &[
            "deploy",
            p,
            "--name",
            web,
            "--port",
            &port_s,
            "--health-path",
            "health",
        ],
        "must start with '/'",
    );

    // A port held by another program.
    let other = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let taken = other.local_addr().unwrap().port().to_string();
    refused(
        &sb,
        &["deploy", p, "--name", web, "--port", &taken],
        // It names the holder: this test's own process.
        &format!(
            "port {taken} is in use by another program, pid {}",
            std::process::id()
        ),
    );

    // A malformed manifest: the error names the file, the key and the line.
    let broken = sb.service("hello", "v9");
    std::fs::write(
        broken.join("service.toml"),
        "name = \"x\"\nport = \"eighty\"\n",
    )
    .unwrap();
    let manifest = broken.join("service.toml");
    refused(
        &sb,
        &["deploy", broken.to_str().unwrap()],
        &format!(
            "{}:2: port: invalid type: string \"eighty\"",
            manifest.display()
        ),
    );
    std::fs::write(&manifest, "name = \"x\"\n[health\n").unwrap();
    refused(
        &sb,
        &["deploy", broken.to_str().unwrap()],
        &format!("{}:2:", manifest.display()),
    );

    // With --json, a refusal is JSON on stdout too.
    let r = sb.run(&["--json", "deploy", p, "--name", "../etc", "--port", &port_s]);
    r.assert_code(10);
    let err = r.json();
    assert_eq!(err["failure"], "invalid");
    assert_eq!(err["field"], "service_name");
    assert_eq!(err["exit_code"], 10);

    // The old version still answers after all of that.
    assert_eq!(version_on(port).as_deref(), Some("v1"));
}

#[test]
fn a_directory_without_a_manifest_deploys_from_flags() {
    let sb = Sandbox::new();
    let name = &sb.name("bare");
    let port = free_port();
    let src = sb.service("hello", "v5");
    std::fs::remove_file(src.join("service.toml")).unwrap();
    let r = sb.run(&[
        "deploy",
        src.to_str().unwrap(),
        "--name",
        name,
        "--port",
        &port.to_string(),
    ]);
    r.assert_code(10);
    assert!(r.stderr.contains("needs a start command"), "{}", r.stderr);
    sb.track(name);
    sb.run(&[
        "deploy",
        src.to_str().unwrap(),
        "--name",
        name,
        "--port",
        &port.to_string(),
        "--method",
        "process",
        "--build",
        "rustc -o hello main.rs",
        "--start",
        "./hello",
        "--health-path",
        "/version",
        "--env",
        "GREETING=flags only",
    ])
    .assert_code(0);
    assert_eq!(version_on(port).as_deref(), Some("v5"));
    assert_eq!(http_get(port, "/env/GREETING").unwrap().1, "flags only");
}

#[test]
fn unknown_service_and_job_are_not_found() {
    let sb = Sandbox::new();
    let r = sb.run(&["history", "nothing-here"]);
    r.assert_code(12);
    assert!(r.stderr.contains("no deployer state"), "{}", r.stderr);
    let web = &sb.name("web");
    sb.deploy(&sb.service("hello", "v1"), web, free_port(), "process", &[])
        .assert_code(0);
    let r = sb.run(&["history", "nothing-here"]);
    r.assert_code(12);
    assert!(
        r.stderr.contains("no deploys of service 'nothing-here'"),
        "{}",
        r.stderr
    );
    let r = sb.run(&["status", "deploy-00000000"]);
    r.assert_code(12);
    assert!(
        r.stderr.contains("no job 'deploy-00000000'"),
        "{}",
        r.stderr
    );
    let r = sb.run(&["rollback", web]);
    r.assert_code(13);
    assert!(r.stderr.contains("no previous release"), "{}", r.stderr);
    let r = sb.run(&["history", "../x"]);
    r.assert_code(10);
}

#[test]
fn config_errors_name_file_key_and_line() {
    let sb = Sandbox::new();
    let cfg = sb.dir.path().join("deployer.toml");
    std::fs::write(
        &cfg,
        "state_dir = \"/tmp/x\"\n\n[defaults]\nkeep_releases = \"many\"\n",
    )
    .unwrap();
    let r = sb.run(&["--config", cfg.to_str().unwrap(), "history", "web"]);
    r.assert_code(10);
    assert!(
        r.stderr.contains(&format!(
            "{}:4: defaults.keep_releases: invalid type",
            cfg.display()
        )),
        "{}",
        r.stderr
    );
    let r = sb.run_with(&["history", "web"], |c| {
        c.env("DEPLOYMENT_METHOD", "ftp");
    });
    r.assert_code(10);
    assert!(
        r.stderr
            .contains("environment: DEPLOYMENT_METHOD: unknown deployment method 'ftp'"),
        "{}",
        r.stderr
    );
}

#[test]
fn values_that_would_overflow_are_refused_not_a_panic() {
    let sb = Sandbox::new();
    let src = sb.service("hello", "v1");
    let p = src.to_str().unwrap();
    let web = &sb.name("web");
    let port = free_port().to_string();
    let huge = u64::MAX.to_string();
    let r = sb.run(&["deploy", p, "--name", web, "--port", &port, "--wait", &huge]);
    r.assert_code(10);
    assert!(r.stderr.contains("--wait"), "{}", r.stderr);
    let manifest = std::fs::read_to_string(src.join("service.toml")).unwrap();
    for (text, expect) in [
        (
            manifest.replace("timeout_secs = 30", &format!("timeout_secs = {huge}")),
            "health timeout_secs",
        ),
        (
            format!("stop_grace_secs = {huge}\n{manifest}"),
            "stop_grace_secs",
        ),
    ] {
        let broken = sb.service("hello", "v9");
        std::fs::write(broken.join("service.toml"), text).unwrap();
        let r = sb.run(&[
            "deploy",
            broken.to_str().unwrap(),
            "--name",
            web,
            "--port",
            &port,
        ]);
        r.assert_code(10);
        assert!(
            r.stderr.contains(expect) && r.stderr.contains("too long"),
            "{}",
            r.stderr
        );
    }
}

#[test]
fn without_a_name_the_service_is_named_after_its_directory() {
    let sb = Sandbox::new();
    let src = sb.service("hello", "v1");
    let named = src.parent().unwrap().join("orders-api");
    std::fs::rename(&src, &named).unwrap();
    let manifest = named.join("service.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("name = \"hello\"\n", "")).unwrap();
    sb.track("orders-api");
    let port = free_port().to_string();
    let job = sb
        .run(&["--json", "deploy", named.to_str().unwrap(), "--port", &port])
        .assert_code(0)
        .json();
    assert_eq!(job["service_name"], "orders-api");
    let bad = src.parent().unwrap().join("Bad Name");
    std::fs::rename(&named, &bad).unwrap();
    let r = sb.run(&["deploy", bad.to_str().unwrap(), "--port", &port]);
    r.assert_code(10);
    assert!(r.stderr.contains("give --name"), "{}", r.stderr);
}
