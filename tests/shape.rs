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
