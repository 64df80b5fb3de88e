//! Transfer over SSH to a real sshd, deployer against `rsync -a` and `scp
//! -r` over the same sshd: a full upload of a release (one 200 MiB file and
//! 2,000 small ones), then a redeploy after changing one small file. Both
//! on loopback and through a delay line on loopback (a proxy here that
//! holds every chunk for half the added round trip each way, 20 ms by
//! default, `UPLOAD_DELAY_MS`), which also counts the bytes each side sent.
//! Sides alternate; `UPLOAD_RUNS` rounds (default 3); medians printed.
//! Run: `cargo bench --bench upload` (scripts/bench upload).

use deployer::hosting::host::Host;
use deployer::hosting::release::ServiceDirs;
use deployer::hosting::ssh::{SshAuth, SshSession, SshTarget};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn keygen(path: &Path) {
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

/// An sshd for the client key in `d` (made once), configured by `tag`'s
/// files; `extra` adds configuration.
fn sshd(d: &Path, tag: &str, extra: &str) -> (std::process::Child, u16) {
    if !d.join("client").exists() {
        keygen(&d.join("client"));
        std::fs::copy(d.join("client.pub"), d.join("ak")).unwrap();
    }
    keygen(&d.join(format!("host-{tag}")));
    std::fs::create_dir_all("/run/sshd").ok();
    let cfg = d.join(format!("cfg-{tag}"));
    std::fs::write(
        &cfg,
        format!(
            "ListenAddress 127.0.0.1\nHostKey {0}/host-{tag}\nPidFile {0}/pid-{tag}\nAuthorizedKeysFile {0}/ak\nStrictModes no\nUsePAM no\nPasswordAuthentication no\nSubsystem sftp internal-sftp\n{extra}",
            d.display()
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("/usr/sbin/sshd")
        .args(["-D", "-f"])
        .arg(&cfg)
        .args(["-p", &port.to_string()])
        .stderr(Stdio::null())
        .spawn()
        .expect("sshd (apt-get install openssh-server)");
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, port)
}

/// An sshd whose sessions find a `tar` that is not GNU tar first: deployer
/// sends the files over SFTP there.
fn sshd_without_gnu_tar(d: &Path) -> (std::process::Child, u16) {
    let bin = d.join("notar");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("tar"), "#!/bin/sh\nexit 1\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bin.join("tar"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "SetEnv PATH={}:/usr/local/bin:/usr/bin:/bin\n",
        bin.display()
    );
    sshd(d, "sftp", &path)
}

/// A delay line in front of `to`: every chunk read is written on after
/// `one_way`, in order, without waiting for the one before (a long link,
/// not a slow one). Counts the bytes going to `to`. On its own thread, so
/// it takes no time from the side being measured.
fn delay_proxy(to: u16, one_way: Duration, sent: Arc<AtomicU64>) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let server = tokio::net::TcpStream::connect(("127.0.0.1", to))
                    .await
                    .unwrap();
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(line(cr, sw, one_way, Some(sent.clone())));
                tokio::spawn(line(sr, cw, one_way, None));
            }
        })
    });
    port
}

async fn line(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    count: Option<Arc<AtomicU64>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Up to 4,096 chunks in flight: the link holds what the senders'
    // windows allow, as a fast long link does.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(4096);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0 {
                break;
            }
            if let Some(c) = &count {
                c.fetch_add(n as u64, Ordering::Relaxed);
            }
            let due = tokio::time::Instant::now() + delay;
            if tx.send((due, buf[..n].to_vec())).await.is_err() {
                break;
            }
        }
    });
    while let Some((due, data)) = rx.recv().await {
        tokio::time::sleep_until(due).await;
        if to.write_all(&data).await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}

/// The release: 2,000 small files in 20 directories and one 200 MiB file.
fn release(src: &Path) {
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
}

/// Writes back what earlier runs left dirty, so each run starts even.
fn settle() {
    let _ = Command::new("sync").status();
}

struct Link {
    port: u16,
    sent: Arc<AtomicU64>,
}

struct Bench {
    d: PathBuf,
    /// Where the copies go on the "server".
    server: PathBuf,
    src: PathBuf,
    key: PathBuf,
}

impl Bench {
    async fn deployer(&self, link: &Link, dest: &str) -> (f64, f64, u64) {
        let target = SshTarget {
            user: "root".into(),
            host: "127.0.0.1".into(),
            port: link.port,
            auth: SshAuth::KeyFile(self.key.clone()),
            known_hosts: self.d.join(format!("kh-{}", link.port)),
            pinned_host_key: None,
            accept_new: true,
            connect_timeout: Duration::from_secs(10),
        };
        let dirs = ServiceDirs {
            root: self.server.join(dest),
        };
        let none = |_: u64, _: u64| {};
        // Each upload connects first, as rsync does (and a deploy).
        let connect = || async { Host::Ssh(Box::new(SshSession::connect(&target).await.unwrap())) };
        connect().await; // known_hosts learns the key outside the timing
        self.touch("v1");
        settle();
        let t = Instant::now();
        connect()
            .await
            .put_release(&self.src, &dirs, "r1", None, &none)
            .await
            .unwrap();
        let full = t.elapsed().as_secs_f64();
        self.touch("v2");
        settle();
        let before = link.sent.load(Ordering::Relaxed);
        let t = Instant::now();
        let s = connect()
            .await
            .put_release(&self.src, &dirs, "r2", Some("r1"), &none)
            .await
            .unwrap();
        let one = t.elapsed().as_secs_f64();
        assert_eq!(s.uploaded_files, 1);
        (full, one, link.sent.load(Ordering::Relaxed) - before)
    }

    fn ssh(&self, link: &Link) -> String {
        format!(
            "ssh -p {} -i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile={}",
            link.port,
            self.key.display(),
            self.d.join(format!("kh-o{}", link.port)).display()
        )
    }

    /// rsync -a into `dest`: a full copy, then the same one-file change
    /// (rsync updates its copy in place).
    fn rsync(&self, link: &Link, dest: &str) -> (f64, f64, u64) {
        let run = || {
            let t = Instant::now();
            let ok = Command::new("rsync")
                .args(["-a", "-e", &self.ssh(link)])
                .arg(format!("{}/", self.src.display()))
                .arg(format!(
                    "root@127.0.0.1:{}/",
                    self.server.join(dest).display()
                ))
                .status()
                .unwrap()
                .success();
            assert!(ok, "rsync failed");
            t.elapsed().as_secs_f64()
        };
        self.touch("v1");
        settle();
        let full = run();
        self.touch("v2");
        settle();
        let before = link.sent.load(Ordering::Relaxed);
        let one = run();
        (full, one, link.sent.load(Ordering::Relaxed) - before)
    }

    fn scp(&self, link: &Link, dest: &str) -> f64 {
        settle();
        let t = Instant::now();
        let ok = Command::new("scp")
            .args(["-q", "-r", "-o", "StrictHostKeyChecking=no", "-o"])
            .arg(format!(
                "UserKnownHostsFile={}",
                self.d.join(format!("kh-s{}", link.port)).display()
            ))
            .arg("-i")
            .arg(&self.key)
            .args(["-P", &link.port.to_string()])
            .arg(&self.src)
            .arg(format!(
                "root@127.0.0.1:{}",
                self.server.join(dest).display()
            ))
            .status()
            .unwrap()
            .success();
        assert!(ok, "scp failed");
        t.elapsed().as_secs_f64()
    }

    fn touch(&self, v: &str) {
        std::fs::write(self.src.join("assets/d7/f777.txt"), format!("{v}\n")).unwrap();
    }

    fn clean(&self, dest: &str) {
        let _ = std::fs::remove_dir_all(self.server.join(dest));
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let runs = env("UPLOAD_RUNS", 3) as usize;
    let delay_ms = env("UPLOAD_DELAY_MS", 20);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut sshd, port) = sshd(d, "main", "");
    let (mut sshd_sftp, port_sftp) = sshd_without_gnu_tar(d);
    let mut b = Bench {
        d: d.to_path_buf(),
        server: d.to_path_buf(),
        src: d.join("src"),
        key: d.join("client"),
    };
    release(&b.src);
    let direct = Link {
        port,
        sent: Arc::new(AtomicU64::new(0)),
    };
    let sent = Arc::new(AtomicU64::new(0));
    let delayed = Link {
        port: delay_proxy(port, Duration::from_millis(delay_ms / 2), sent.clone()),
        sent,
    };
    // The same on loopback with the server's copies on XFS, where a copy
    // is a reflink (as root, with mkfs.xfs and a loop device).
    let xfs = xfs_mount(d);
    let mut links = vec![("loopback", &direct)];
    if xfs.is_some() {
        links.push(("xfs", &direct));
    }
    links.push(("delay", &delayed));
    let sftp = Link {
        port: port_sftp,
        sent: Arc::new(AtomicU64::new(0)),
    };
    links.push(("sftp", &sftp));
    for (name, link) in links {
        // Through the delay line onto XFS when there is one: the link,
        // not the server's disk, is what that row measures.
        if name != "loopback" {
            b.server = xfs.clone().unwrap_or_else(|| d.to_path_buf());
        }
        let (mut ours, mut theirs, mut scp) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..runs {
            if i % 2 == 0 {
                ours.push(b.deployer(link, "dep").await);
                theirs.push(b.rsync(link, "rs"));
            } else {
                theirs.push(b.rsync(link, "rs"));
                ours.push(b.deployer(link, "dep").await);
            }
            // scp -r pays round trips per file: 186 s through the delay
            // line once; timed on loopback only.
            if name == "loopback" {
                scp.push(b.scp(link, "scp"));
            }
            for dest in ["dep", "rs", "scp"] {
                b.clean(dest);
            }
        }
        let col = |v: &[(f64, f64, u64)], f: fn(&(f64, f64, u64)) -> f64| {
            median(v.iter().map(f).collect())
        };
        println!(
            "{name}: deployer full {:.2} s, one file {:.2} s ({} bytes); rsync -a full {:.2} s, one file {:.2} s ({} bytes)",
            col(&ours, |r| r.0),
            col(&ours, |r| r.1),
            ours[0].2,
            col(&theirs, |r| r.0),
            col(&theirs, |r| r.1),
            theirs[0].2,
        );
        // For scripts/bench.
        println!("RESULT {name}_deployer_full {:.4}", col(&ours, |r| r.0));
        println!("RESULT {name}_deployer_one {:.4}", col(&ours, |r| r.1));
        println!("RESULT {name}_rsync_full {:.4}", col(&theirs, |r| r.0));
        println!("RESULT {name}_rsync_one {:.4}", col(&theirs, |r| r.1));
        if !scp.is_empty() {
            println!("RESULT {name}_scp_full {:.4}", median(scp));
        }
        if name == "delay" {
            println!("BYTES deployer_one {}", col(&ours, |r| r.2 as f64) as u64);
            println!("BYTES rsync_one {}", col(&theirs, |r| r.2 as f64) as u64);
        }
    }
    if let Some(m) = xfs {
        let _ = Command::new("umount").arg(&m).status();
    }
    for child in [&mut sshd, &mut sshd_sftp] {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A 2 GiB XFS filesystem (reflinks on) in a file, mounted under `d`.
fn xfs_mount(d: &Path) -> Option<PathBuf> {
    let (img, mnt) = (d.join("xfs.img"), d.join("xfs"));
    std::fs::create_dir_all(&mnt).ok()?;
    let ok = |c: &mut Command| c.stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    (ok(Command::new("truncate").arg("-s").arg("2G").arg(&img))
        && ok(Command::new("mkfs.xfs").args(["-q", "-f"]).arg(&img))
        && ok(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt)))
    .then_some(mnt)
}
