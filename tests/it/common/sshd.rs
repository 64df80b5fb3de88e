//! A real OpenSSH server on loopback with throwaway keys, as in
//! shared/TESTBED.md §1. Nothing under /etc/ssh is touched.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Sshd {
    pub dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

fn keygen(path: &Path) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(path.with_extension("pub"));
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen (apt-get install openssh-client)")
        .success();
    assert!(ok, "ssh-keygen failed");
}

impl Sshd {
    /// Starts sshd in `dir` (keys and config are made there).
    pub fn start(dir: &Path) -> Sshd {
        Sshd::start_with(dir, "")
    }

    /// Starts sshd with more lines of configuration.
    pub fn start_with(dir: &Path, extra: &str) -> Sshd {
        assert!(
            Path::new("/usr/sbin/sshd").exists(),
            "these tests need /usr/sbin/sshd (apt-get install openssh-server); scripts/test installs it"
        );
        std::fs::create_dir_all(dir).unwrap();
        std::fs::create_dir_all("/run/sshd").ok();
        keygen(&dir.join("host_ed25519"));
        keygen(&dir.join("client_key"));
        std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
        std::fs::write(
            dir.join("sshd_config"),
            format!(
                "ListenAddress 127.0.0.1\nHostKey {d}/host_ed25519\nPidFile {d}/sshd.pid\n\
                 AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PubkeyAuthentication yes\nPermitRootLogin prohibit-password\n\
                 Subsystem sftp internal-sftp\nMaxSessions 100\nMaxStartups 100\n{extra}",
                d = dir.display()
            ),
        )
        .unwrap();
        let mut sshd = Sshd {
            dir: dir.to_path_buf(),
            port: super::free_port(),
            child: None,
        };
        sshd.spawn();
        sshd
    }

    fn spawn(&mut self) {
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(self.dir.join("sshd_config"))
            .args(["-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("sshd.log")).unwrap())
            .spawn()
            .expect("start sshd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd did not listen: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Plays a man-in-the-middle: a new host key, same address.
    pub fn swap_host_key(&mut self) {
        self.stop();
        keygen(&self.dir.join("host_ed25519"));
        self.spawn();
    }

    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client_key")
    }

    pub fn address(&self) -> String {
        format!("root@127.0.0.1:{}", self.port)
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}
