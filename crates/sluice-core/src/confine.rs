//! Reading files named by a caller, confined to one directory (the server's `--data-root`).
//!
//! A request may name a file by a path relative to the data root; it must never read anything
//! outside it, whatever the path says (`..`, absolute, NUL bytes) and whatever the tree holds
//! (symlinks pointing out, FIFOs that would block a reader, directories). Lexical checks give
//! the caller a precise message; the opening itself goes through `cap-std`, which resolves every
//! component (symlinks included) beneath the root with `openat2(RESOLVE_BENEATH)` or an
//! equivalent walk, so a symlink swapped in between the check and the open cannot escape either.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt};

/// Why a caller's path was refused or could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// The path is malformed: empty, absolute, with `..` or a NUL byte (HTTP 400).
    #[error("path \"{path}\" is refused: {reason}")]
    Invalid {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The path resolves outside the data root, through a symlink (HTTP 403).
    #[error("path \"{path}\" is refused: it resolves outside the data root")]
    Escapes {
        /// The path as given.
        path: String,
    },
    /// Nothing exists at the path (HTTP 404).
    #[error("path \"{path}\" does not exist under the data root")]
    NotFound {
        /// The path as given.
        path: String,
    },
    /// The path names a directory, FIFO, socket or device (HTTP 400).
    #[error("path \"{path}\" is refused: it is a {kind}, not a regular file")]
    NotAFile {
        /// The path as given.
        path: String,
        /// What it is instead.
        kind: &'static str,
    },
    /// The file is larger than the caller allows (HTTP 413).
    #[error("path \"{path}\" is {size} bytes; the limit is {limit} bytes")]
    TooLarge {
        /// The path as given.
        path: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Reading failed for another reason.
    #[error("path \"{path}\" could not be read: {source}")]
    Io {
        /// The path as given.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// A directory that caller-supplied relative paths are confined to.
#[derive(Debug)]
pub struct DataRoot {
    dir: Dir,
    path: PathBuf,
}

impl DataRoot {
    /// Opens the root directory; fails when it does not exist or is not a directory.
    pub fn open(path: impl AsRef<Path>) -> std::io::Result<Self> {
        let path = path.as_ref().canonicalize()?;
        let dir = Dir::open_ambient_dir(&path, cap_std::ambient_authority())?;
        Ok(Self { dir, path })
    }

    /// The root, canonicalised.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks a caller's path without touching the file system.
    pub fn check(rel: &str) -> Result<&Path, PathError> {
        let invalid = |reason| PathError::Invalid {
            path: rel.to_owned(),
            reason,
        };
        if rel.is_empty() {
            return Err(invalid("it is empty"));
        }
        if rel.contains('\0') {
            return Err(invalid("it contains a NUL byte"));
        }
        let path = Path::new(rel);
        for c in path.components() {
            match c {
                Component::Normal(_) | Component::CurDir => {}
                Component::ParentDir => {
                    return Err(invalid(
                        "\"..\" is not allowed; give a path inside the data root",
                    ))
                }
                Component::RootDir | Component::Prefix(_) => {
                    return Err(invalid(
                        "absolute paths are not allowed; give a path relative to the data root",
                    ))
                }
            }
        }
        Ok(path)
    }

    /// Opens a regular file beneath the root for reading, whatever its size (for readers that
    /// stream it).
    pub fn open_file(&self, rel: &str) -> Result<std::fs::File, PathError> {
        let path = Self::check(rel)?;
        let err = |e: std::io::Error| self.classify(rel, e);
        // Look before opening: opening a FIFO for reading would block until a writer appears.
        let meta = self.dir.metadata(path).map_err(err)?;
        not_a_file(rel, &meta)?;
        // Non-blocking, in case a FIFO was swapped in after the look; checked again on the handle.
        let mut opts = OpenOptions::new();
        opts.read(true).custom_flags(nonblocking());
        let file = self.dir.open_with(path, &opts).map_err(err)?;
        not_a_file(rel, &file.metadata().map_err(err)?)?;
        Ok(file.into_std())
    }

    /// Reads a regular file beneath the root, refusing files larger than `limit` bytes.
    pub fn read(&self, rel: &str, limit: u64) -> Result<Vec<u8>, PathError> {
        let err = |e: std::io::Error| self.classify(rel, e);
        let file = self.open_file(rel)?;
        let meta = file.metadata().map_err(err)?;
        if meta.len() > limit {
            return Err(PathError::TooLarge {
                path: rel.to_owned(),
                size: meta.len(),
                limit,
            });
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        // The file may grow after the size check: read one byte past the limit to notice.
        file.take(limit + 1).read_to_end(&mut bytes).map_err(err)?;
        if bytes.len() as u64 > limit {
            return Err(PathError::TooLarge {
                path: rel.to_owned(),
                size: bytes.len() as u64,
                limit,
            });
        }
        Ok(bytes)
    }

    fn classify(&self, rel: &str, e: std::io::Error) -> PathError {
        let path = rel.to_owned();
        match e.kind() {
            std::io::ErrorKind::NotFound => PathError::NotFound { path },
            // cap-std answers an escape (a symlink out of the root) with PermissionDenied.
            std::io::ErrorKind::PermissionDenied => PathError::Escapes { path },
            std::io::ErrorKind::IsADirectory => PathError::NotAFile {
                path,
                kind: "directory",
            },
            _ => PathError::Io { path, source: e },
        }
    }
}

fn not_a_file(rel: &str, meta: &cap_std::fs::Metadata) -> Result<(), PathError> {
    let ft = meta.file_type();
    if ft.is_file() {
        return Ok(());
    }
    let kind = if ft.is_dir() {
        "directory"
    } else if ft.is_symlink() {
        "symlink"
    } else {
        special_kind(&ft)
    };
    Err(PathError::NotAFile {
        path: rel.to_owned(),
        kind,
    })
}

#[cfg(unix)]
fn special_kind(ft: &cap_std::fs::FileType) -> &'static str {
    use cap_std::fs::FileTypeExt;
    if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "device"
    } else {
        "special file"
    }
}

#[cfg(not(unix))]
fn special_kind(_: &cap_std::fs::FileType) -> &'static str {
    "special file"
}

#[cfg(unix)]
fn nonblocking() -> i32 {
    libc::O_NONBLOCK
}

#[cfg(not(unix))]
fn nonblocking() -> u32 {
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_checks_name_the_problem() {
        for (p, want) in [
            ("", "empty"),
            ("a\0b", "NUL"),
            ("../etc/passwd", ".."),
            ("a/../../b", ".."),
            ("/etc/passwd", "absolute"),
        ] {
            let e = DataRoot::check(p).unwrap_err().to_string();
            assert!(e.contains(want), "{p:?}: {e}");
        }
        assert!(DataRoot::check("a/./b.wav").is_ok());
        // Percent-encoding is not decoded: the name is taken literally.
        assert!(DataRoot::check("%2e%2e/x").is_ok());
    }
}
