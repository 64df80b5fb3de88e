//! The shape the code keeps (issue 7): no file under src/ over 600 lines
//! and no function over 80, so a new capability lands as a new file.

fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Each `fn` with its length in lines, by counting braces from its line.
fn functions(text: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i].trim_start();
        let decl = [
            "fn ",
            "pub fn ",
            "async fn ",
            "pub async fn ",
            "pub(crate) fn ",
            "pub(super) fn ",
            "pub(super) async fn ",
            "pub(crate) async fn ",
            "pub(in crate::engine) async fn ",
            "pub(in crate::engine) fn ",
        ]
        .iter()
        .find_map(|d| l.strip_prefix(d));
        let Some(rest) = decl else {
            i += 1;
            continue;
        };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let (mut depth, mut opened, mut j) = (0i32, false, i);
        while j < lines.len() {
            for c in lines[j].chars() {
                match c {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            if (opened && depth <= 0) || (!opened && lines[j].trim_end().ends_with(';')) {
                break;
            }
            j += 1;
        }
        found.push((name, j - i + 1));
        i = if opened { j + 1 } else { i + 1 };
    }
    found
}

#[test]
fn no_file_over_600_lines_and_no_function_over_80() {
    let mut files = Vec::new();
    rust_files(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    let mut too_big = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let n = text.lines().count();
        if n > 600 {
            too_big.push(format!("{}: {n} lines", f.display()));
        }
        for (name, len) in functions(&text) {
            if len > 80 {
                too_big.push(format!("{}: fn {name}: {len} lines", f.display()));
            }
        }
    }
    assert!(too_big.is_empty(), "split these:\n{}", too_big.join("\n"));
}

/// Each production `.rs` file under src/ with its text before any
/// `#[cfg(test)]` (test modules come last), test files left out.
fn production_sources() -> Vec<(std::path::PathBuf, String)> {
    let mut files = Vec::new();
    rust_files(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    files
        .into_iter()
        .filter(|f| {
            let name = f.file_name().unwrap().to_string_lossy();
            !name.ends_with("tests.rs") && name != "scripted.rs"
        })
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            let text = match text.find("#[cfg(test)]") {
                Some(i) => text[..i].to_string(),
                None => text,
            };
            (f, text)
        })
        .collect()
}

/// Issue 22: what differs between process, docker, systemd and swarm lives
/// behind the Runtime trait in src/hosting/runtime/, so no other file asks which
/// runtime it has (the type's own definition in model/ aside).
#[test]
fn no_runtime_kind_is_matched_outside_runtime() {
    let mut found = Vec::new();
    for (f, text) in production_sources() {
        let path = f.to_string_lossy().replace('\\', "/");
        if path.contains("/src/hosting/runtime/") || path.ends_with("/src/model/release.rs") {
            continue;
        }
        for (i, line) in text.lines().enumerate() {
            let l = line.trim();
            let arm = l.starts_with("RuntimeKind::") && (l.contains("=>") || l.contains(" | "));
            let compared = l.contains("== RuntimeKind::") || l.contains("!= RuntimeKind::");
            let matched = l.contains("matches!(") && l.contains("RuntimeKind::");
            let let_else = l.contains("let RuntimeKind::");
            if arm || compared || matched || let_else {
                found.push(format!("{}:{}: {l}", f.display(), i + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "ask the runtime instead (a method on the Runtime trait):\n{}",
        found.join("\n")
    );
}

/// The error type of each `Result<T, E>` in `text` whose E is `String`.
fn string_errors(text: &str) -> usize {
    let mut count = 0;
    let mut rest = text;
    while let Some(i) = rest.find("Result<") {
        rest = &rest[i + "Result<".len()..];
        let (mut depth, mut last_comma, mut end) = (1, None, None);
        for (j, c) in rest.char_indices() {
            match c {
                '<' | '(' | '[' => depth += 1,
                '>' | ')' | ']' => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(j);
                        break;
                    }
                }
                ',' if depth == 1 => last_comma = Some(j),
                _ => {}
            }
        }
        if let (Some(comma), Some(end)) = (last_comma, end)
            && rest[comma + 1..end].trim() == "String"
        {
            count += 1;
        }
    }
    count
}

/// Issue 22: errors keep their type to the edge; at most three places in
/// production code carry an error as a bare `String`.
#[test]
fn at_most_three_errors_are_bare_strings() {
    let mut found = Vec::new();
    for (f, text) in production_sources() {
        let n = string_errors(&text);
        if n > 0 {
            found.push(format!("{}: {n}", f.display()));
        }
    }
    let total: usize = found
        .iter()
        .map(|l| l.rsplit(": ").next().unwrap().parse::<usize>().unwrap())
        .sum();
    assert!(
        total <= 3,
        "{total} Result<_, String> outside tests (at most 3); give them a type:\n{}",
        found.join("\n")
    );
}

#[test]
fn a_string_error_is_found_where_it_is_nested() {
    assert_eq!(
        string_errors("fn f() -> Result<Vec<(u8, String)>, String> {"),
        1
    );
    assert_eq!(
        string_errors("fn f() -> Result<BTreeMap<String, String>, Failure>"),
        0
    );
    assert_eq!(string_errors("OnceCell<Result<String, String>>"), 1);
}
