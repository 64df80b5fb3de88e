//! A real PostgreSQL server on loopback for the backup tests, as in
//! shared/TESTBED.md: a throwaway cluster run as the postgres user.

use std::path::PathBuf;
use std::process::Command;

pub struct Postgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
}

fn bin_dir() -> Option<PathBuf> {
    let root = std::path::Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(root)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|v| v.join("bin"))
        .filter(|b| b.join("initdb").exists())
}

fn as_postgres(args: &[&str]) -> std::process::Output {
    Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .args(args)
        .output()
        .expect("runuser")
}

impl Postgres {
    /// Starts a cluster, or None (the test says it skipped) when this
    /// machine has no PostgreSQL and the run does not require one.
    pub fn start() -> Option<Postgres> {
        let Some(bin) = bin_dir() else {
            if std::env::var("DEPLOYER_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
                panic!("DEPLOYER_REQUIRE_POSTGRES=1 but PostgreSQL is not installed");
            }
            super::skipped("no PostgreSQL here (apt-get install postgresql)");
            return None;
        };
        let port = super::free_port();
        let dir = std::env::temp_dir().join(format!("deployer-pg-{port}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(
            Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap()
                .success()
        );
        let data = dir.join("data");
        let out = as_postgres(&[
            bin.join("initdb").to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "postgres",
        ]);
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1",
            dir.display()
        );
        let out = as_postgres(&[
            bin.join("pg_ctl").to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-o",
            &opts,
            "-l",
            dir.join("log").to_str().unwrap(),
            "-w",
            "start",
        ]);
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(Postgres { port, dir, bin })
    }

    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs SQL; its output (unaligned, tuples only).
    pub fn sql(&self, sql: &str) -> String {
        let out = Command::new("psql")
            .args([&self.url(), "-v", "ON_ERROR_STOP=1", "-Atc", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_postgres(&[
            self.bin.join("pg_ctl").to_str().unwrap(),
            "-D",
            self.dir.join("data").to_str().unwrap(),
            "-m",
            "fast",
            "stop",
        ]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
