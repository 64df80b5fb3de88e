//! Backups before every deploy, against a real PostgreSQL: the dump is one
//! `pg_restore --list` accepts, rotation keeps `keep`, `restore` brings back
//! a dropped table, and a backup that fails to verify stops the deploy
//! before anything stops.

use crate::common::postgres::Postgres;
use crate::common::*;
use std::path::Path;

fn with_backup(src: &Path, verify: &str) {
    add_to_manifest(
        src,
        &format!(
            "\n[backup]\nkeep = 2\nmax_age_days = 7\npaths = [\"data\"]\n\n\
         [[backup.commands]]\nname = \"db\"\n\
         dump = 'pg_dump --format=custom \"$DATABASE_URL\"'\n\
         verify = {verify:?}\n\
         restore = 'pg_restore --clean --if-exists -d \"$DATABASE_URL\"'\n"
        ),
    );
}

#[test]
fn backups_before_each_deploy_rotate_verify_and_restore_a_dropped_table() {
    let Some(pg) = Postgres::start() else { return };
    pg.sql("CREATE TABLE items (id int primary key, name text)");
    pg.sql("INSERT INTO items VALUES (1, 'one'), (2, 'two')");
    let sb = Sandbox::new();
    let name = &sb.tracked("backedup");
    let port = free_port();
    let db = format!("DATABASE_URL={}", pg.url());
    // Data the service keeps in its directory, archived too.
    let data = sb.state_dir().join("services").join(name).join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("uploads.txt"), "kept\n").unwrap();
    for v in ["v1", "v2", "v3"] {
        let src = sb.service("hello", v);
        with_backup(&src, "pg_restore --list");
        let job = sb
            .deploy(&src, name, port, "process", &["--env", &db, "--json"])
            .assert_code(0)
            .json();
        let start = phase(&job, "Start Service");
        assert_eq!(start["steps"][0]["step"], "backup", "{start:#}");
        assert!(
            start["details"].as_str().unwrap().contains("verified"),
            "{start:#}"
        );
    }
    let listed = sb.run(&["--json", "backups", name]).assert_code(0).json();
    let list = listed.as_array().unwrap();
    assert_eq!(list.len(), 2, "keep = 2: {listed:#}");
    let newest = list.last().unwrap();
    assert!(
        newest["created_at"].as_str().unwrap().starts_with("20"),
        "{newest}"
    );
    let releases = sb.run(&["--json", "releases", name]).json();
    assert!(
        releases
            .to_string()
            .contains(newest["release"].as_str().unwrap()),
        "{newest}"
    );
    let dump = Path::new(newest["path"].as_str().unwrap()).join("db.zst");
    let check = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("zstd -dc {} | pg_restore --list", dump.display()))
        .output()
        .unwrap();
    assert!(check.status.success());
    assert!(String::from_utf8_lossy(&check.stdout).contains("TABLE public items"));

    // A dropped table comes back.
    pg.sql("DROP TABLE items");
    std::fs::remove_file(data.join("uploads.txt")).unwrap();
    let id = newest["id"].as_str().unwrap();
    sb.run(&["restore", name, id]).assert_code(10);
    sb.run(&["restore", name, id, "--yes"]).assert_code(0);
    assert_eq!(pg.sql("SELECT count(*) FROM items"), "2");
    assert_eq!(
        std::fs::read_to_string(data.join("uploads.txt")).unwrap(),
        "kept\n"
    );

    // A backup that does not verify fails the deploy before anything stops.
    let bad = sb.service("hello", "v4");
    with_backup(&bad, "false");
    let r = sb.deploy(&bad, name, port, "process", &["--env", &db]);
    r.assert_code(16);
    assert_eq!(version_on(port).as_deref(), Some("v3"));
    assert_eq!(
        sb.run(&["--json", "backups", name])
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // A migration that fails after breaking the database: with
    // restore_on_failure, the backup taken just before it is put back.
    let breaking = sb.service("hello", "v5");
    with_backup(&breaking, "pg_restore --list");
    let manifest = breaking.join("service.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let text = text.replace("[backup]\n", "[backup]\nrestore_on_failure = true\n");
    std::fs::write(
        &manifest,
        format!("migrate = 'psql \"$DATABASE_URL\" -qc \"DROP TABLE items\" && exit 1'\n{text}"),
    )
    .unwrap();
    let r = sb.deploy(&breaking, name, port, "process", &["--env", &db]);
    r.assert_code(15);
    assert!(r.stdout.contains("restored"), "{}", r.stdout);
    assert_eq!(pg.sql("SELECT count(*) FROM items"), "2");
    assert_eq!(version_on(port).as_deref(), Some("v3"));

    // `snapshot` backs up every service that has a [backup].
    let snap = sb.run(&["snapshot"]);
    snap.assert_code(0);
    assert!(
        snap.stdout.contains(&format!("{name}: backup")),
        "{}",
        snap.stdout
    );
}
