//! Every TOML example in docs/configuration.md parses as the file it says it
//! is (its first line, `# deployer.toml` or `# service.toml`), so the
//! reference cannot drift from the code.

use deployer::input::config::{DeployerConfig, Manifest, parse_toml};

#[test]
fn every_documented_example_parses() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .unwrap();
    let mut blocks = Vec::new();
    let mut rest = doc.as_str();
    while let Some(start) = rest.find("```toml\n") {
        let body = &rest[start + 8..];
        let end = body.find("```").expect("closed block");
        blocks.push(&body[..end]);
        rest = &body[end + 3..];
    }
    let (mut deployer, mut service) = (0, 0);
    for block in &blocks {
        match block.lines().next() {
            Some("# deployer.toml") => {
                parse_toml::<DeployerConfig>(block, "docs")
                    .unwrap_or_else(|e| panic!("{e}\n{block}"));
                deployer += 1;
            }
            Some("# service.toml") => {
                parse_toml::<Manifest>(block, "docs").unwrap_or_else(|e| panic!("{e}\n{block}"));
                service += 1;
            }
            other => panic!(
                "a toml block must start with `# deployer.toml` or `# service.toml`, not {other:?}"
            ),
        }
    }
    // One example per section: top level, [target], [defaults], [api],
    // [[notify]], [git]; top
    // level, [tests], [backup], [[smoke]], [health], [env], [docker],
    // [systemd], [rollout].
    assert_eq!((deployer, service), (7, 13));
}

#[test]
fn the_example_services_manifests_parse() {
    for dir in [
        "hello",
        "broken/fails-to-build",
        "broken/exits-at-start",
        "broken/never-healthy",
    ] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(dir);
        let m = Manifest::load_from_dir(&path).unwrap().expect("a manifest");
        assert_eq!(m.name.as_deref(), Some("hello"));
    }
}

#[test]
fn the_readme_documents_every_exit_code() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table = readme
        .split("## Exit codes")
        .nth(1)
        .expect("an exit code section");
    let documented: Vec<i32> = table
        .lines()
        .take_while(|l| !l.starts_with("## "))
        .filter_map(|l| l.strip_prefix("| ")?.split(' ').next()?.parse().ok())
        .collect();
    let mut expected: Vec<i32> = deployer::support::error::FailureKind::ALL
        .iter()
        .map(|k| k.exit_code())
        .collect();
    expected.push(0);
    expected.sort();
    let mut documented_sorted = documented.clone();
    documented_sorted.sort();
    assert_eq!(documented_sorted, expected, "README exit codes vs the code");
}
