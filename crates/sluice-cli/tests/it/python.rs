//! The Python package (`python/`): its pytest suite, run with the tools' Python (where
//! `scripts/install-deps.sh` installs it with httpx and pytest) against this build's `sluice`:
//! the sync and asyncio clients against a real `sluice serve`, and `sluice.stage` programs run by
//! a real `sluice run`.

use std::process::Command;

#[test]
fn the_python_package_passes_its_tests_against_this_build() {
    let python = sluice_testkit::find_tool("python", "SLUICE_TEST_PYTHON");
    let package = sluice_testkit::repo_root().join("python");
    let out = Command::new(&python)
        .args(["-m", "pytest", "tests", "-q", "-p", "no:cacheprovider"])
        .current_dir(&package)
        .env("SLUICE_BIN", env!("CARGO_BIN_EXE_sluice"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/install-deps.sh)", python.display()));
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{report}");
    assert!(report.contains(" passed"), "{report}");
}
