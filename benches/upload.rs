//! Transfer over SSH to a real sshd on loopback: a full upload of a release
//! (one 200 MiB file and 2,000 small ones), then a redeploy after changing
//! one small file, which should send only that file. OpenSSH's `scp -r` of
//! the same directory is timed as a baseline.
//! Run: `cargo bench --bench upload`. Figures go in docs/benchmarks.md.

use deployer::host::Host;
use deployer::release::ServiceDirs;
use deployer::ssh::{SshAuth, SshSession, SshTarget};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn keygen(path: &std::path::Path) {
    let _ = std::fs::remove_file(path);
    assert!(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(path)
            .status()
            .unwrap()
            .success()
    );
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    keygen(&d.join("host"));
    keygen(&d.join("client"));
    std::fs::copy(d.join("client.pub"), d.join("ak")).unwrap();
    std::fs::create_dir_all("/run/sshd").ok();
    std::fs::write(
        d.join("cfg"),
        format!(
            "ListenAddress 127.0.0.1\nHostKey {0}/host\nPidFile {0}/pid\nAuthorizedKeysFile {0}/ak\nStrictModes no\nUsePAM no\nPasswordAuthentication no\nSubsystem sftp internal-sftp\n",
            d.display()
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut sshd = Command::new("/usr/sbin/sshd")
        .args(["-D", "-f"])
        .arg(d.join("cfg"))
        .args(["-p", &port.to_string()])
        .stderr(Stdio::null())
        .spawn()
        .expect("sshd (apt-get install openssh-server)");
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }

    let src = d.join("src");
    for i in 0..2000 {
        let sub = src.join(format!("assets/d{}", i / 100));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(
            sub.join(format!("f{i}.txt")),
            format!("asset {i}\n").repeat(20),
        )
        .unwrap();
    }
    let big: Vec<u8> = (0..200u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    std::fs::write(src.join("big.bin"), &big).unwrap();
    let total: u64 = 200 << 20;

    let target = SshTarget {
        user: "root".into(),
        host: "127.0.0.1".into(),
        port,
        auth: SshAuth::KeyFile(d.join("client")),
        known_hosts: d.join("known_hosts"),
        pinned_host_key: None,
        accept_new: true,
        connect_timeout: Duration::from_secs(10),
    };
    let host = Host::Ssh(Box::new(SshSession::connect(&target).await.unwrap()));
    let dirs = ServiceDirs {
        root: d.join("remote/bench"),
    };
    let none = |_: u64, _: u64| {};

    let t = Instant::now();
    let s1 = host
        .put_release(&src, &dirs, "r1", None, &none)
        .await
        .unwrap();
    let full = t.elapsed();
    std::fs::write(src.join("assets/d7/f777.txt"), "changed\n").unwrap();
    let t = Instant::now();
    let s2 = host
        .put_release(&src, &dirs, "r2", Some("r1"), &none)
        .await
        .unwrap();
    let incremental = t.elapsed();

    let t = Instant::now();
    let scp = Command::new("scp")
        .args(["-q", "-r", "-o", "StrictHostKeyChecking=no", "-o"])
        .arg(format!("UserKnownHostsFile={}", d.join("kh2").display()))
        .arg("-i")
        .arg(d.join("client"))
        .args(["-P", &port.to_string()])
        .arg(&src)
        .arg(format!("root@127.0.0.1:{}", d.join("scp-copy").display()))
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let scp_time = t.elapsed();
    // rsync -a over the same sshd: a full copy, then the same one-file
    // change (rsync updates its copy in place).
    let ssh = format!(
        "ssh -p {port} -i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile={}",
        d.join("client").display(),
        d.join("kh3").display()
    );
    let rsync = |stats: bool| {
        let t = Instant::now();
        let out = Command::new("rsync")
            .args(["-a", "--stats", "-e", &ssh])
            .arg(format!("{}/", src.display()))
            .arg(format!(
                "root@127.0.0.1:{}/",
                d.join("rsync-copy").display()
            ))
            .output()
            .ok()
            .filter(|o| o.status.success());
        let elapsed = t.elapsed();
        let sent = out.and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let line = text
                .lines()
                .find(|l| l.starts_with("Total bytes sent:"))?
                .to_string();
            line.split(':')
                .nth(1)?
                .trim()
                .replace(',', "")
                .parse::<u64>()
                .ok()
        });
        (elapsed, if stats { sent } else { sent.or(Some(0)) })
    };
    std::fs::write(src.join("assets/d7/f777.txt"), "changed\n").unwrap();
    let (rsync_full, full_sent) = rsync(false);
    std::fs::write(src.join("assets/d7/f777.txt"), "changed again\n").unwrap();
    let (rsync_one, one_sent) = rsync(true);
    let _ = sshd.kill();
    let _ = sshd.wait();

    let mib = |b: u64, d: Duration| b as f64 / (1u64 << 20) as f64 / d.as_secs_f64();
    println!(
        "upload to sshd on loopback, {} files, {:.0} MiB:",
        s1.files,
        s1.bytes as f64 / (1u64 << 20) as f64
    );
    println!(
        "  full upload       {:>7.2} s  {:>6.1} MiB/s  ({} files sent)",
        full.as_secs_f64(),
        mib(s1.uploaded_bytes, full),
        s1.uploaded_files
    );
    println!(
        "  one file changed  {:>7.2} s  ({} sent, {} copied on the server)",
        incremental.as_secs_f64(),
        s2.uploaded_files,
        s2.linked_files
    );
    if scp {
        println!(
            "  OpenSSH scp -r    {:>7.2} s  {:>6.1} MiB/s  (baseline)",
            scp_time.as_secs_f64(),
            mib(total, scp_time)
        );
    }
    if let (Some(full_sent), Some(one_sent)) = (full_sent, one_sent) {
        println!(
            "  rsync -a          {:>7.2} s full ({full_sent} bytes sent), {:.2} s one file ({one_sent} bytes)",
            rsync_full.as_secs_f64(),
            rsync_one.as_secs_f64()
        );
        println!("BYTES rsync_one {one_sent}");
        println!("RESULT rsync_full {:.4}", rsync_full.as_secs_f64());
        println!("RESULT rsync_one {:.4}", rsync_one.as_secs_f64());
    }
    // For scripts/bench.
    println!("RESULT deployer_full {:.4}", full.as_secs_f64());
    println!("RESULT deployer_one {:.4}", incremental.as_secs_f64());
    println!("RESULT scp_full {:.4}", scp_time.as_secs_f64());
    println!("BYTES deployer_one {}", s2.uploaded_bytes);
}
