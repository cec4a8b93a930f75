//! One list of prerequisites: every Debian package a script of the rig checks for, and every
//! package the Dockerfile's build stage installs to build the workspace, is in devstack/packages
//! (what `make deps` installs), and nothing but devstack/deps runs `apt-get install`. A new
//! requirement added in one place only fails here instead of on the next fresh machine.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The package names of devstack/packages (first word of each line, comments stripped).
fn listed() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo().join("devstack/packages")).unwrap();
    text.lines()
        .filter_map(|l| l.split('#').next()?.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Every file of the rig's scripts: devstack/ (its Go modules aside), .ci/run, e2e/demo.sh.
fn scripts() -> Vec<PathBuf> {
    let mut files = vec![repo().join(".ci/run"), repo().join("e2e/demo.sh")];
    let mut dirs = vec![repo().join("devstack")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if !matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("go" | "mod" | "sum")
            ) {
                files.push(path);
            }
        }
    }
    files
}

#[test]
fn every_package_a_rig_script_checks_for_is_in_the_list() {
    let listed = listed();
    let mut missing = Vec::new();
    let mut checked = 0;
    for file in scripts() {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            // `mp_require_cmd CMD PACKAGE`
            if let ["mp_require_cmd", _, package, ..] = words.as_slice() {
                if package.starts_with('[') || package.starts_with('$') {
                    continue; // the function's own definition and usage line
                }
                checked += 1;
                if !listed.contains(*package) {
                    missing.push(format!("{}: {package}", file.display()));
                }
            }
        }
    }
    assert!(checked >= 10, "only {checked} mp_require_cmd checks found");
    assert!(
        missing.is_empty(),
        "packages checked for but not in devstack/packages: {missing:?}"
    );
}

#[test]
fn the_dockerfiles_build_packages_are_in_the_list() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let build_stage = dockerfile
        .split("AS runtime")
        .next()
        .expect("a build stage");
    let install = build_stage
        .split("apt-get install")
        .nth(1)
        .expect("the build stage installs packages");
    let packages: Vec<&str> = install
        .split("&&")
        .next()
        .unwrap()
        .split_whitespace()
        .filter(|w| !w.starts_with('-') && *w != "\\")
        .collect();
    assert!(packages.contains(&"cmake"), "{packages:?}");
    let listed = listed();
    let missing: Vec<_> = packages.iter().filter(|p| !listed.contains(**p)).collect();
    assert!(
        missing.is_empty(),
        "the Dockerfile's build stage installs {missing:?}, which devstack/packages lacks"
    );
}

#[test]
fn only_devstack_deps_installs_packages() {
    let offenders: Vec<_> = scripts()
        .into_iter()
        .filter(|f| !f.ends_with("devstack/deps"))
        .filter(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .any(|l| l.contains("apt-get install") || l.contains("apt install"))
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "install packages through devstack/packages and devstack/deps only: {offenders:?}"
    );
}
