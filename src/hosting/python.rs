//! Python services (the seeds' kind: FastAPI under uvicorn, tests with
//! pytest) on the process and systemd methods, here and over SSH.
//!
//! A service with a `requirements.txt` (or a `pyproject.toml`) is a Python
//! service. Its dependencies go into a virtualenv kept per service on the
//! target under `venvs/KEY`, where KEY hashes the interpreter's version,
//! the requirements file and the wheelhouse's file names: a release whose
//! requirements did not change links the same venv (`.venv` in the
//! release) and installs nothing. pip's own cache (`cache/pip`) makes a
//! changed file cheap. A venv no kept release links is removed with the
//! last one; the cache is emptied past 1 GiB.

use crate::model::PythonSpec;
use std::path::Path;

/// The files that make a directory a Python service, in the order looked at.
const DEPS_FILES: [&str; 2] = ["requirements.txt", "pyproject.toml"];

/// Whether `dir` holds a Python service, and what its dependencies come from.
pub fn detect(dir: &Path) -> Option<PythonSpec> {
    DEPS_FILES
        .iter()
        .find(|f| dir.join(f).is_file())
        .map(|f| PythonSpec {
            deps: f.to_string(),
        })
}

/// `MODULE:app` for an ASGI app the directory defines at the top level of
/// `main.py` or `app.py` (`app = FastAPI()`, `app = Starlette(...)`).
pub fn asgi_app(dir: &Path) -> Option<String> {
    ["main", "app"].iter().find_map(|module| {
        let text = std::fs::read_to_string(dir.join(format!("{module}.py"))).ok()?;
        let defines = text.lines().any(|l| {
            l.strip_prefix("app")
                .map(str::trim_start)
                .is_some_and(|rest| rest.starts_with('=') && !rest.starts_with("=="))
        });
        defines.then(|| format!("{module}:app"))
    })
}

/// The start command of an ASGI app.
pub fn uvicorn(asgi: &str, bind: &str) -> String {
    format!("uvicorn {asgi} --host {bind} --port $PORT")
}

/// Where a service's venvs and pip's cache live on a host.
pub struct VenvDirs<'a> {
    pub venvs: &'a Path,
    pub cache: &'a Path,
}

/// A shell script that makes (or reuses) the venv for the dependencies of
/// the service in `dir` and prints `venv=PATH` last; with `link`, also
/// points `dir/.venv` at it. A failed install removes its venv and ends
/// with pip's own error.
pub fn deps_script(dir: &Path, spec: &PythonSpec, at: &VenvDirs, link: bool) -> String {
    let q = |p: &Path| crate::support::cmd::quote(&p.to_string_lossy());
    let install = if spec.deps == "requirements.txt" {
        "-r requirements.txt"
    } else {
        "."
    };
    format!(
        r#"set -e
cd {dir}
py=$(command -v python3) || {{ echo "python3 is not installed on this host" >&2; exit 1; }}
key=$( {{ "$py" -c 'import sys; print(sys.version)'; cat {deps}; if [ -d wheelhouse ]; then ls wheelhouse; fi; }} | sha256sum | cut -c1-16)
venv={venvs}/$key
if [ -f "$venv/.deployer-ready" ]; then
  how="reused"
else
  rm -rf "$venv"
  mkdir -p {venvs} {cache}
  # Without pip in the venv (seeding one costs seconds): the system's pip
  # installs into it where it can (pip 22.3 or later), else the venv's own.
  "$py" -m venv --without-pip "$venv"
  if "$py" -m pip --python "$venv/bin/python" --version >/dev/null 2>&1; then
    pip() {{ "$py" -m pip --python "$venv/bin/python" "$@"; }}
  else
    "$venv/bin/python" -m ensurepip --default-pip >/dev/null
    pip() {{ "$venv/bin/python" -m pip "$@"; }}
  fi
  set -- --cache-dir {cache} --disable-pip-version-check --quiet --quiet
  if [ -d wheelhouse ]; then set -- "$@" --no-index --find-links wheelhouse; how="installed from wheelhouse/"; else how="installed"; fi
  if ! pip install "$@" {install}; then rm -rf "$venv"; exit 1; fi
  touch "$venv/.deployer-ready"
fi
{link}echo "$how"
echo "venv=$venv""#,
        dir = q(dir),
        deps = crate::support::cmd::quote(&spec.deps),
        venvs = q(at.venvs),
        cache = q(at.cache),
        link = if link {
            // A `.venv` shipped in the service directory is replaced.
            "rm -rf .venv\nln -sfn \"$venv\" .venv\n"
        } else {
            ""
        },
    )
}

/// A shell script, run in a service's directory on a host, that removes
/// the venvs no release links any more and empties pip's cache past 1 GiB.
pub fn prune_script(service_root: &Path) -> String {
    format!(
        r#"cd {root} 2>/dev/null || exit 0
[ -d venvs ] || exit 0
for v in "$PWD"/venvs/*; do
  [ -d "$v" ] || continue
  used=
  for l in releases/*/.venv; do
    [ "$(readlink "$l" 2>/dev/null)" = "$v" ] && used=1 && break
  done
  [ -n "$used" ] || rm -rf "$v"
done
if [ -d cache/pip ] && [ "$(du -sm cache/pip | cut -f1)" -gt 1024 ]; then rm -rf cache/pip; fi
exit 0"#,
        root = crate::support::cmd::quote(&service_root.to_string_lossy()),
    )
}

/// What a deps script said: how (reused, installed) and the venv's path.
pub fn parse_output(stdout: &str) -> (String, Option<String>) {
    let venv = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("venv="))
        .map(str::to_string);
    let how = stdout
        .lines()
        .rev()
        .find(|l| !l.starts_with("venv=") && !l.trim().is_empty())
        .unwrap_or("")
        .to_string();
    (how, venv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_and_their_apps_are_recognised() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(detect(dir.path()), None);
        std::fs::write(dir.path().join("pyproject.toml"), "").unwrap();
        assert_eq!(detect(dir.path()).unwrap().deps, "pyproject.toml");
        std::fs::write(dir.path().join("requirements.txt"), "fastapi\n").unwrap();
        assert_eq!(detect(dir.path()).unwrap().deps, "requirements.txt");
        assert_eq!(asgi_app(dir.path()), None);
        std::fs::write(dir.path().join("app.py"), "app == 1\n").unwrap();
        assert_eq!(
            asgi_app(dir.path()),
            None,
            "a comparison is not a definition"
        );
        std::fs::write(
            dir.path().join("main.py"),
            "from fastapi import FastAPI\n\napp = FastAPI()\n",
        )
        .unwrap();
        assert_eq!(asgi_app(dir.path()).as_deref(), Some("main:app"));
        assert_eq!(
            uvicorn("main:app", "127.0.0.1"),
            "uvicorn main:app --host 127.0.0.1 --port $PORT"
        );
    }

    #[test]
    fn a_deps_script_says_how_and_where() {
        assert_eq!(
            parse_output("installed\nvenv=/srv/x/venvs/ab\n"),
            ("installed".to_string(), Some("/srv/x/venvs/ab".to_string()))
        );
        let spec = PythonSpec {
            deps: "requirements.txt".into(),
        };
        let at = VenvDirs {
            venvs: Path::new("/srv/my svc/venvs"),
            cache: Path::new("/srv/my svc/cache/pip"),
        };
        let s = deps_script(Path::new("/srv/my svc/releases/r1"), &spec, &at, true);
        assert!(s.contains("venv='/srv/my svc/venvs'/$key"), "{s}");
        assert!(s.contains("ln -sfn \"$venv\" .venv"), "{s}");
        assert!(!deps_script(Path::new("/x"), &spec, &at, false).contains("ln -sfn"));
    }
}
