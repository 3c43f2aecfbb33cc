//! Path confinement against the attack list: every path that could read outside the data root,
//! block the reader or read a non-file is refused, and nothing outside the root is ever read.

use std::os::unix::fs::symlink;

use sluice_core::confine::{DataRoot, PathError};

const SECRET: &[u8] = b"outside the data root";

/// `base/root` is the data root; `base/secret.txt` and `base/outside/` lie next to it.
fn tree() -> (tempfile::TempDir, DataRoot) {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("root");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("a.txt"), b"inside").unwrap();
    std::fs::write(root.join("sub/b.txt"), b"nested").unwrap();
    std::fs::write(base.path().join("secret.txt"), SECRET).unwrap();
    std::fs::create_dir(base.path().join("outside")).unwrap();
    std::fs::write(base.path().join("outside/c.txt"), SECRET).unwrap();
    // Escapes through symlinks: to a file, to a directory, by an absolute and a relative target.
    symlink(base.path().join("secret.txt"), root.join("abs-link.txt")).unwrap();
    symlink("../secret.txt", root.join("rel-link.txt")).unwrap();
    symlink(base.path().join("outside"), root.join("out-dir")).unwrap();
    symlink("../../secret.txt", root.join("sub/deep-link.txt")).unwrap();
    // A symlink that stays inside is followed.
    symlink("sub/b.txt", root.join("in-link.txt")).unwrap();
    let fifo = std::ffi::CString::new(root.join("pipe").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let dr = DataRoot::open(&root).unwrap();
    (base, dr)
}

#[test]
fn files_inside_the_root_are_read() {
    let (_base, root) = tree();
    assert_eq!(root.read("a.txt", 1 << 20).unwrap(), b"inside");
    assert_eq!(root.read("./sub/b.txt", 1 << 20).unwrap(), b"nested");
    assert_eq!(root.read("sub//b.txt", 1 << 20).unwrap(), b"nested");
    assert_eq!(root.read("in-link.txt", 1 << 20).unwrap(), b"nested");
}

#[test]
fn the_attack_list_is_refused_naming_the_path() {
    let (base, root) = tree();
    let abs = base.path().join("secret.txt").display().to_string();
    let cases: Vec<(String, &str)> = vec![
        ("../secret.txt".into(), "invalid"),
        ("sub/../../secret.txt".into(), "invalid"),
        ("sub/../a.txt".into(), "invalid"),
        (abs, "invalid"),
        ("/etc/passwd".into(), "invalid"),
        ("a.txt\0.wav".into(), "invalid"),
        ("".into(), "invalid"),
        // Percent-encoding is a literal file name here, which does not exist.
        ("%2e%2e/secret.txt".into(), "not found"),
        ("..%2fsecret.txt".into(), "not found"),
        ("abs-link.txt".into(), "escapes"),
        ("rel-link.txt".into(), "escapes"),
        ("out-dir/c.txt".into(), "escapes"),
        ("sub/deep-link.txt".into(), "escapes"),
        ("sub".into(), "not a file"),
        (".".into(), "not a file"),
        ("pipe".into(), "not a file"),
        ("missing.wav".into(), "not found"),
    ];
    for (path, want) in cases {
        let err = root.read(&path, 1 << 20).unwrap_err();
        let kind = match &err {
            PathError::Invalid { .. } => "invalid",
            PathError::Escapes { .. } => "escapes",
            PathError::NotFound { .. } => "not found",
            PathError::NotAFile { .. } => "not a file",
            other => panic!("{path:?}: unexpected {other}"),
        };
        assert_eq!(kind, want, "{path:?}: {err}");
        let shown = path.replace('\0', "\\0");
        let msg = err.to_string().replace('\0', "\\0");
        assert!(
            msg.contains(&shown),
            "{path:?}: the message names the path: {msg}"
        );
    }
}

#[test]
fn a_file_over_the_limit_is_refused() {
    let (_base, root) = tree();
    let err = root.read("a.txt", 3).unwrap_err();
    assert!(
        matches!(
            err,
            PathError::TooLarge {
                size: 6,
                limit: 3,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_missing_root_is_an_error() {
    assert!(DataRoot::open("/nonexistent/data/root").is_err());
}
