//! The documentation holds against the code: the generated reference is current, every relative
//! link resolves, every environment variable the code reads is in the reference, and the crate
//! graph in `docs/ARCHITECTURE.md` is the one `cargo metadata` reports.
//!
//! `SLUICE_BLESS=1 cargo test -p sluice-cli --test it docs::` rewrites `docs/reference/` from the
//! code instead of failing on a difference.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    sluice_testkit::repo_root()
}

#[test]
fn the_reference_is_generated_from_the_code() {
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("reference")
        .arg(out.path())
        .status()
        .unwrap();
    assert!(status.success());
    let committed = root().join("docs/reference");
    let bless = std::env::var_os("SLUICE_BLESS").is_some_and(|v| v == "1");
    for page in ["cli.md", "environment.md", "pipeline.md", "metrics.md"] {
        let generated = std::fs::read_to_string(out.path().join(page)).unwrap();
        let path = committed.join(page);
        if bless {
            std::fs::write(&path, &generated).unwrap();
            continue;
        }
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            current == generated,
            "docs/reference/{page} is not what the code generates: run \
             `SLUICE_BLESS=1 cargo test -p sluice-cli --test it docs::` and commit it"
        );
    }
}

/// Every Markdown file of the documentation: the README, BENCHMARKS, docs/ and the Python
/// package's README.
fn markdown_files() -> Vec<PathBuf> {
    let root = root();
    let mut files = vec![
        root.join("README.md"),
        root.join("BENCHMARKS.md"),
        root.join("python/README.md"),
    ];
    let mut dirs = vec![root.join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    files
}

/// The targets of the inline links `[text](target)` of a Markdown text, code blocks skipped.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            if let Some(end) = rest.find(')') {
                out.push(rest[..end].to_owned());
                rest = &rest[end..];
            }
        }
    }
    out
}

#[test]
fn every_relative_link_of_the_documentation_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for target in links(&text) {
            let target = target.split_whitespace().next().unwrap_or_default();
            if target.contains("://") || target.starts_with('#') || target.starts_with("mailto:") {
                continue;
            }
            let path = target.split('#').next().unwrap_or_default();
            checked += 1;
            if !file.parent().unwrap().join(path).exists() {
                broken.push(format!("{}: {target}", file.display()));
            }
        }
    }
    assert!(checked > 50, "only {checked} links found");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// Environment variable names the product's sources read (or set for the programs they start).
fn variables_in_sources() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let crates = root().join("crates");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&crates)
        .unwrap()
        .map(|e| e.unwrap().path().join("src"))
        // Test helpers start the tests' own servers; they are not the product's settings.
        .filter(|p| !p.starts_with(crates.join("sluice-testkit")))
        .collect();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for call in ["var(\"", "var_os(\"", "env(\"", "try_from_env(\""] {
                    for piece in text.split(call).skip(1) {
                        let name: String = piece
                            .chars()
                            .take_while(|c| {
                                c.is_ascii_uppercase() || *c == '_' || c.is_ascii_digit()
                            })
                            .collect();
                        if name.len() > 2 && piece[name.len()..].starts_with('"') {
                            names.insert(name);
                        }
                    }
                }
            }
        }
    }
    names
}

#[test]
fn every_variable_the_code_reads_is_in_the_environment_reference() {
    let reference = std::fs::read_to_string(root().join("docs/reference/environment.md")).unwrap();
    let names = variables_in_sources();
    for expected in ["SLUICE_CPU_ISA", "HF_TOKEN", "PGPASSFILE", "SLUICE_STAGE"] {
        assert!(names.contains(expected), "{expected} not found: {names:?}");
    }
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !reference.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "read by the code but not in docs/reference/environment.md (add them to \
         OTHER_VARIABLES in crates/sluice-cli/src/reference.rs): {missing:?}"
    );
}

/// `crate -> dep, dep` lines of the architecture's crate graph.
fn documented_graph(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let block = text
        .split("```text")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("docs/ARCHITECTURE.md has its crate graph in a ```text block");
    block
        .lines()
        .filter_map(|line| line.split_once("->"))
        .map(|(name, deps)| {
            let deps = deps
                .split(',')
                .map(str::trim)
                .filter(|d| d.starts_with("sluice-"))
                .map(str::to_owned)
                .collect();
            (name.trim().to_owned(), deps)
        })
        .collect()
}

#[test]
fn the_architectures_crate_graph_is_cargo_metadatas() {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut actual: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for package in meta["packages"].as_array().unwrap() {
        let name = package["name"].as_str().unwrap();
        if name == "sluice-testkit" {
            continue;
        }
        let deps = package["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            // Normal dependencies: dev-dependencies (the test kit) are not the architecture.
            .filter(|d| d["kind"].is_null())
            .filter_map(|d| d["name"].as_str())
            .filter(|d| d.starts_with("sluice-"))
            .map(str::to_owned)
            .collect();
        actual.insert(name.to_owned(), deps);
    }
    let text = std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).unwrap();
    assert_eq!(documented_graph(&text), actual);
}
