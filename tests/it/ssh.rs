//! The SSH transport against a real sshd on loopback: key auth, strict host
//! keys, commands with exit codes, secrets kept off the command line.

use crate::common::sshd::Sshd;
use deployer::hosting::ssh::{SshAuth, SshError, SshSession, SshTarget};
use deployer::support::cmd::{Cmd, Transport};
use deployer::support::secret::Secret;
use std::time::Duration;

fn target(sshd: &Sshd, known_hosts: &std::path::Path, accept_new: bool) -> SshTarget {
    SshTarget {
        user: "root".into(),
        host: "127.0.0.1".into(),
        port: sshd.port,
        auth: SshAuth::KeyFile(sshd.client_key()),
        known_hosts: known_hosts.to_path_buf(),
        pinned_host_key: None,
        accept_new,
        connect_timeout: Duration::from_secs(10),
    }
}

#[tokio::test]
async fn accept_new_records_the_key_then_strict_checking_trusts_it() {
    let dir = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(&dir.path().join("sshd"));
    let kh = dir.path().join("known_hosts");

    // First contact without accept-new: refused, and says how to proceed.
    let err = SshSession::connect(&target(&sshd, &kh, false))
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, SshError::HostKeyUnknown { .. }), "{err}");
    assert!(err.to_string().contains("SHA256:"), "{err}");
    assert!(!kh.exists(), "nothing recorded without accept-new");

    let s = SshSession::connect(&target(&sshd, &kh, true))
        .await
        .expect("accept-new");
    s.close().await;
    let recorded = std::fs::read_to_string(&kh).unwrap();
    assert!(
        recorded.starts_with(&format!("[127.0.0.1]:{} ssh-ed25519 ", sshd.port)),
        "{recorded}"
    );

    let s = SshSession::connect(&target(&sshd, &kh, false))
        .await
        .expect("known now");
    let out = s
        .exec(
            &Cmd::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(
        (out.code, out.stdout.as_str(), out.stderr.as_str()),
        (Some(3), "out\n", "err\n")
    );
}

#[tokio::test]
async fn a_changed_host_key_is_refused_showing_both_fingerprints() {
    let dir = tempfile::tempdir().unwrap();
    let mut sshd = Sshd::start(&dir.path().join("sshd"));
    let kh = dir.path().join("known_hosts");
    SshSession::connect(&target(&sshd, &kh, true))
        .await
        .unwrap()
        .close()
        .await;
    let before = std::fs::read_to_string(&kh).unwrap();

    sshd.swap_host_key();
    // Even with accept-new: a *changed* key is never accepted.
    let err = SshSession::connect(&target(&sshd, &kh, true))
        .await
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(
        matches!(err, SshError::HostKeyChanged { line: 1, .. }),
        "{msg}"
    );
    assert!(msg.contains("HOST KEY CHANGED"), "{msg}");
    assert_eq!(
        msg.matches("SHA256:").count(),
        2,
        "both fingerprints: {msg}"
    );
    assert_eq!(
        std::fs::read_to_string(&kh).unwrap(),
        before,
        "known_hosts untouched"
    );
}

#[tokio::test]
async fn wrong_client_key_and_closed_port_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut sshd = Sshd::start(&dir.path().join("sshd"));
    let kh = dir.path().join("known_hosts");
    let mut t = target(&sshd, &kh, true);
    let other = dir.path().join("other_key");
    std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .unwrap();
    t.auth = SshAuth::KeyFile(other);
    let err = SshSession::connect(&t).await.err().expect("rejected");
    assert!(matches!(err, SshError::AuthRejected { .. }), "{err}");

    t.auth = SshAuth::KeyFile(dir.path().join("missing_key"));
    let err = SshSession::connect(&t).await.err().expect("no key");
    assert!(err.to_string().contains("missing_key"), "{err}");

    sshd.stop();
    let err = SshSession::connect(&target(&sshd, &kh, true))
        .await
        .err()
        .expect("closed");
    assert!(
        err.to_string()
            .starts_with("cannot connect to root@127.0.0.1:"),
        "{err}"
    );
}

#[tokio::test]
async fn secret_env_reaches_the_command_but_not_its_argv() {
    let dir = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(&dir.path().join("sshd"));
    let kh = dir.path().join("known_hosts");
    let s = SshSession::connect(&target(&sshd, &kh, true))
        .await
        .unwrap();
    let cmd = Cmd::new("sh")
        .args([
            "-c",
            "echo \"$API_KEY|$MODE\"; cat /proc/$$/cmdline | tr '\\0' ' '",
        ])
        .env("MODE", "blue sky")
        .secret_env("API_KEY", Secret::new("it's a 'secret' $value"))
        .cwd("/tmp");
    let out = s.exec(&cmd, Duration::from_secs(10)).await.unwrap();
    let mut lines = out.stdout.lines();
    assert_eq!(lines.next(), Some("it's a 'secret' $value|blue sky"));
    assert!(
        !lines.next().unwrap_or("").contains("secret"),
        "{}",
        out.stdout
    );
}

#[tokio::test]
async fn keys_held_by_an_ssh_agent_authenticate() {
    let dir = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(&dir.path().join("sshd"));
    let sock = dir.path().join("agent.sock");
    let mut agent = std::process::Command::new("ssh-agent")
        .args(["-D", "-a"])
        .arg(&sock)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("ssh-agent");
    crate::common::eventually(10, "the agent socket", || sock.exists().then_some(()));
    let added = std::process::Command::new("ssh-add")
        .arg(sshd.client_key())
        .env("SSH_AUTH_SOCK", &sock)
        .output()
        .unwrap();
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let mut t = target(&sshd, &dir.path().join("known_hosts"), true);
    t.auth = SshAuth::Agent(sock.clone());
    let s = SshSession::connect(&t).await.expect("agent auth");
    let out = s
        .exec(&Cmd::new("true"), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(out.code, Some(0));
    let _ = agent.kill();
    let _ = agent.wait();
}

#[tokio::test]
async fn a_pinned_host_key_is_checked_instead_of_known_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let mut sshd = Sshd::start(&dir.path().join("sshd"));
    let pinned = std::fs::read_to_string(sshd.dir.join("host_ed25519.pub")).unwrap();
    let mut t = target(&sshd, &dir.path().join("no_known_hosts"), false);
    t.pinned_host_key = Some(pinned.trim().to_string());
    SshSession::connect(&t)
        .await
        .expect("the pinned key matches")
        .close()
        .await;
    assert!(!dir.path().join("no_known_hosts").exists());

    sshd.swap_host_key();
    let err = SshSession::connect(&t).await.err().expect("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("HOST KEY CHANGED") && msg.contains("the key pinned in config"),
        "{msg}"
    );
    assert_eq!(msg.matches("SHA256:").count(), 2, "{msg}");
}

fn holder(job: &str) -> deployer::support::flock::Holder {
    deployer::support::flock::Holder {
        job_id: job.to_string(),
        pid: 1,
        actor: "someone@elsewhere".into(),
        since: chrono::Utc::now(),
    }
}

#[tokio::test]
async fn a_stale_remote_lock_has_exactly_one_new_holder_and_the_old_one_cannot_unlock_it() {
    use deployer::hosting::host::Host;
    use deployer::hosting::release::ServiceDirs;
    let dir = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(&dir.path().join("sshd"));
    let kh = dir.path().join("known_hosts");
    let connect = || async {
        Host::Ssh(Box::new(
            SshSession::connect(&target(&sshd, &kh, true))
                .await
                .unwrap(),
        ))
    };
    let (a, b) = (connect().await, connect().await);
    let root = dir.path().join("base/web");
    let dirs = ServiceDirs { root: root.clone() };
    let lock_dir = root.join("deploy.lock.d");
    let alive = |_: &deployer::support::flock::Holder| false;
    for round in 0..10 {
        // A lock whose holder stopped refreshing it 200 s ago.
        let _ = std::fs::remove_dir_all(&lock_dir);
        std::fs::create_dir_all(&lock_dir).unwrap();
        let dead = holder("deploy-dead");
        std::fs::write(
            lock_dir.join("holder.json"),
            serde_json::to_string(&dead).unwrap(),
        )
        .unwrap();
        let old = std::process::Command::new("touch")
            .args(["-d", "-200 seconds"])
            .arg(lock_dir.join("holder.json"))
            .status()
            .unwrap();
        assert!(old.success());
        let (ha, hb) = (
            holder(&format!("deploy-a{round}")),
            holder(&format!("deploy-b{round}")),
        );
        let (ra, rb) = tokio::join!(a.lock(&dirs, &ha, alive), b.lock(&dirs, &hb, alive));
        let winners = [ra.is_ok(), rb.is_ok()].iter().filter(|w| **w).count();
        assert_eq!(winners, 1, "round {round}: {ra:?} {rb:?}");
        let (winner, loser) = if ra.is_ok() { (&ha, &hb) } else { (&hb, &ha) };
        let record = std::fs::read_to_string(lock_dir.join("holder.json")).unwrap();
        assert!(record.contains(&winner.job_id), "round {round}: {record}");
        assert!(
            ra.unwrap_or_else(|_| rb.unwrap())
                .is_some_and(|o| o.contains("deploy-dead"))
        );

        // The old holder, back after being cut off, and the loser: their
        // unlocks and refreshes leave the winner's lock alone.
        a.unlock(&dirs, &dead).await;
        b.unlock(&dirs, loser).await;
        assert!(b.heartbeat(&dirs, &dead).await.is_err());
        let record = std::fs::read_to_string(lock_dir.join("holder.json")).unwrap();
        assert!(record.contains(&winner.job_id), "round {round}: {record}");
        assert!(a.heartbeat(&dirs, winner).await.is_ok());
        a.unlock(&dirs, winner).await;
        assert!(
            !lock_dir.exists(),
            "round {round}: the winner's unlock releases it"
        );
    }
}

/// A real sshd on loopback, a host connected to it, and a service's
/// directories under the sandbox (the sshd runs as this user, so the
/// "server's" files are local paths the test can read).
async fn upload_host() -> (
    tempfile::TempDir,
    Sshd,
    deployer::hosting::host::Host,
    deployer::hosting::release::ServiceDirs,
) {
    upload_host_with(|_| String::new()).await
}

/// The same, with the host's sessions finding `script` first as `program`.
async fn upload_host_shadowing(
    program: &str,
    script: &str,
) -> (
    tempfile::TempDir,
    Sshd,
    deployer::hosting::host::Host,
    deployer::hosting::release::ServiceDirs,
) {
    upload_host_with(|d| {
        let bin = d.join("shadow");
        std::fs::create_dir_all(&bin).unwrap();
        let path = bin.join(program);
        std::fs::write(&path, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        format!(
            "SetEnv PATH={}:/usr/local/bin:/usr/bin:/bin\n",
            bin.display()
        )
    })
    .await
}

/// The same, with more sshd configuration made for the sandbox.
async fn upload_host_with(
    extra: impl FnOnce(&std::path::Path) -> String,
) -> (
    tempfile::TempDir,
    Sshd,
    deployer::hosting::host::Host,
    deployer::hosting::release::ServiceDirs,
) {
    let dir = tempfile::tempdir().unwrap();
    let sshd = Sshd::start_with(&dir.path().join("sshd"), &extra(dir.path()));
    let kh = dir.path().join("known_hosts");
    let session = SshSession::connect(&target(&sshd, &kh, true))
        .await
        .unwrap();
    let dirs = deployer::hosting::release::ServiceDirs {
        root: dir.path().join("base/web"),
    };
    (
        dir,
        sshd,
        deployer::hosting::host::Host::Ssh(Box::new(session)),
        dirs,
    )
}

#[tokio::test]
async fn an_incremental_upload_shares_no_file_with_the_previous_release() {
    let (dir, _sshd, host, dirs) = upload_host().await;
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("app.log"), "v1 line\n").unwrap();
    std::fs::write(src.join("VERSION"), "v1").unwrap();
    let none = |_: u64, _: u64| {};
    host.put_release(&src, &dirs, "r1", None, &none)
        .await
        .unwrap();
    // What r1's build and service wrote, beside its source files.
    std::fs::write(dirs.release("r1").join("built.bin"), "r1 build output").unwrap();

    std::fs::write(src.join("VERSION"), "v2").unwrap();
    let stats = host
        .put_release(&src, &dirs, "r2", Some("r1"), &none)
        .await
        .unwrap();
    assert_eq!(
        (stats.uploaded_files, stats.linked_files),
        (1, 1),
        "{stats:?}"
    );
    // r2's build appends to a file it shipped unchanged.
    let out = host
        .exec(
            &Cmd::new("sh").args([
                "-c",
                &format!("echo r2 build >> {}/app.log", dirs.release("r2").display()),
            ]),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert!(out.success());
    let r1_log = std::fs::read_to_string(dirs.release("r1").join("app.log")).unwrap();
    assert_eq!(r1_log, "v1 line\n", "the rollback target's copy changed");
    assert!(
        !dirs.release("r2").join("built.bin").exists(),
        "r1's build output was carried into r2"
    );
    use std::os::unix::fs::MetadataExt;
    let ino = |r: &str| {
        std::fs::metadata(dirs.release(r).join("app.log"))
            .unwrap()
            .ino()
    };
    assert_ne!(ino("r1"), ino("r2"));
}

#[tokio::test]
async fn a_remote_command_that_runs_out_of_time_is_killed_on_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(&dir.path().join("sshd"));
    let kh = dir.path().join("known_hosts");
    let s = SshSession::connect(&target(&sshd, &kh, true))
        .await
        .unwrap();
    let mark = dir.path().join("finished");
    let script = format!("sleep 3; touch {}", mark.display());
    let err = s
        .exec(
            &Cmd::new("sh").args(["-c", &script]),
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("did not finish within 1 s"),
        "{err}"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!mark.exists(), "the command ran on after its time");
}

#[tokio::test]
async fn an_upload_keeps_modes_links_and_odd_names() {
    // Both ends have GNU tar here: the files go as one tar stream.
    let (dir, _sshd, host, dirs) = upload_host().await;
    odd_names_arrive(dir, host, dirs).await;
}

#[tokio::test]
async fn a_host_without_gnu_tar_gets_the_files_over_sftp_as_they_were() {
    // The host's sessions find a `tar` that is not GNU tar first.
    let (dir, _sshd, host, dirs) =
        upload_host_shadowing("tar", "#!/bin/sh\necho 'tar (busybox)'\nexit 1\n").await;
    let out = host
        .exec(
            &Cmd::new("sh").args(["-c", "tar --version"]),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(
        out.stdout.trim(),
        "tar (busybox)",
        "the shim is what the host runs"
    );
    odd_names_arrive(dir, host, dirs).await;
}

async fn odd_names_arrive(
    dir: tempfile::TempDir,
    host: deployer::hosting::host::Host,
    dirs: deployer::hosting::release::ServiceDirs,
) {
    use std::os::unix::fs::PermissionsExt;
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("deep/er dir")).unwrap();
    let files = [
        ("run.sh", 0o755, "#!/bin/sh\necho hi\n"),
        ("secret.key", 0o600, "not for others"),
        ("deep/er dir/näme with 'quotes'.txt", 0o644, "odd"),
    ];
    for (name, mode, body) in files {
        std::fs::write(src.join(name), body).unwrap();
        std::fs::set_permissions(src.join(name), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    std::os::unix::fs::symlink("run.sh", src.join("start")).unwrap();
    let none = |_: u64, _: u64| {};
    let stats = host
        .put_release(&src, &dirs, "r1", None, &none)
        .await
        .unwrap();
    assert_eq!(stats.uploaded_files, 3);
    let release = dirs.release("r1");
    for (name, mode, body) in files {
        let path = release.join(name);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), body, "{name}");
        let got = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(got, mode, "{name}: {got:o}");
    }
    assert_eq!(
        std::fs::read_link(release.join("start")).unwrap(),
        std::path::Path::new("run.sh")
    );
}

/// Three releases: one file changed, then one file gone and one new. Each
/// release holds exactly the source's files and a manifest that says so.
async fn three_releases(
    dir: &std::path::Path,
    host: &deployer::hosting::host::Host,
    dirs: &deployer::hosting::release::ServiceDirs,
) {
    let src = dir.join("src");
    for i in 0..50 {
        std::fs::create_dir_all(src.join(format!("d{}", i % 5))).unwrap();
        std::fs::write(src.join(format!("d{}/f{i}", i % 5)), format!("file {i}\n")).unwrap();
    }
    let none = |_: u64, _: u64| {};
    let manifest = |r: &str| {
        let text = std::fs::read(dirs.release(r).join(".deployer-manifest.json")).unwrap();
        deployer::hosting::host::decode_manifest(&text).unwrap()
    };
    host.put_release(&src, dirs, "r1", None, &none)
        .await
        .unwrap();
    std::fs::write(dirs.release("r1").join("made-by-r1"), "build output").unwrap();
    std::fs::write(src.join("d3/f8"), "changed\n").unwrap();
    let s = host
        .put_release(&src, dirs, "r2", Some("r1"), &none)
        .await
        .unwrap();
    assert_eq!((s.uploaded_files, s.linked_files), (1, 49), "{s:?}");
    assert_eq!(
        manifest("r2"),
        deployer::hosting::host::manifest_of(&src).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(dirs.release("r2").join("d3/f8")).unwrap(),
        "changed\n"
    );
    assert!(
        !dirs.release("r2").join("made-by-r1").exists(),
        "r1's build output was carried over"
    );

    std::fs::remove_file(src.join("d0/f5")).unwrap();
    std::fs::write(src.join("d0/new"), "new\n").unwrap();
    let s = host
        .put_release(&src, dirs, "r3", Some("r2"), &none)
        .await
        .unwrap();
    assert_eq!((s.uploaded_files, s.linked_files), (1, 49), "{s:?}");
    assert_eq!(
        manifest("r3"),
        deployer::hosting::host::manifest_of(&src).unwrap()
    );
    assert!(
        !dirs.release("r3").join("d0/f5").exists(),
        "a removed file came back"
    );
    for r in ["r1", "r2", "r3"] {
        let leftovers: Vec<_> = std::fs::read_dir(dirs.releases())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("partial"))
            .collect();
        assert!(leftovers.is_empty(), "{r}: {leftovers:?}");
    }
}

#[tokio::test]
async fn an_upload_after_a_change_makes_the_manifest_on_the_host_from_the_last_one() {
    let (dir, _sshd, host, dirs) = upload_host().await;
    three_releases(dir.path(), &host, &dirs).await;
}

#[tokio::test]
async fn a_manifest_the_host_cannot_check_is_put_whole() {
    // The host's sha256sum fails: the manifest made there is not trusted.
    let (dir, _sshd, host, dirs) = upload_host_shadowing("sha256sum", "#!/bin/sh\nexit 1\n").await;
    three_releases(dir.path(), &host, &dirs).await;
}

#[tokio::test]
async fn a_release_whose_manifest_is_too_long_for_a_command_line_still_arrives_whole() {
    // 1,500 files: the manifest (over 64 KiB) goes over SFTP, not inline.
    let (dir, _sshd, host, dirs) = upload_host().await;
    let src = dir.path().join("src");
    for i in 0..1500 {
        let sub = src.join(format!("static/d{}", i % 30));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join(format!("asset-{i:05}.css")), format!("a{i}")).unwrap();
    }
    let none = |_: u64, _: u64| {};
    let manifest = |r: &str| {
        let text = std::fs::read(dirs.release(r).join(".deployer-manifest.json")).unwrap();
        assert!(text.len() > 64 << 10, "{} bytes", text.len());
        deployer::hosting::host::decode_manifest(&text).unwrap()
    };
    host.put_release(&src, &dirs, "r1", None, &none)
        .await
        .unwrap();
    assert_eq!(
        manifest("r1"),
        deployer::hosting::host::manifest_of(&src).unwrap()
    );
    std::fs::write(src.join("static/d3/asset-00003.css"), "changed").unwrap();
    let s = host
        .put_release(&src, &dirs, "r2", Some("r1"), &none)
        .await
        .unwrap();
    assert_eq!((s.uploaded_files, s.linked_files), (1, 1499), "{s:?}");
    assert_eq!(
        manifest("r2"),
        deployer::hosting::host::manifest_of(&src).unwrap()
    );
}
