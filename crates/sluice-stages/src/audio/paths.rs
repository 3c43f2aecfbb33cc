//! Output naming: where a source file's outputs go, as a pure function of its relative path, so
//! that writing, skipping finished files and reporting all agree on one rule.

use serde::{Deserialize, Serialize};

/// What happens to a file name's suffix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Suffix {
    /// Keep the name as it is.
    Keep,
    /// Replace the last extension (`a.mp3` → `a.wav` for `.wav`; a name without one gains it).
    Replace(String),
    /// Append (`a.mp3` → `a.mp3.npy` for `.npy`).
    Add(String),
}

/// Maps a source path (relative to the source location) to an output path (relative to the
/// target location): moves it from `from_prefix` to `to_prefix` and applies the suffix rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathRule {
    /// The part of the source path that is replaced (empty: the whole tree is mirrored).
    pub from_prefix: String,
    /// What replaces it.
    pub to_prefix: String,
    /// The suffix rule.
    pub suffix: Suffix,
}

fn dotted(s: &str) -> String {
    if s.starts_with('.') {
        s.to_string()
    } else {
        format!(".{s}")
    }
}

impl PathRule {
    /// Mirrors the tree, replacing the extension with `extension` (`mp3` → `wav`).
    pub fn mirror_with_extension(extension: &str) -> Self {
        PathRule {
            from_prefix: String::new(),
            to_prefix: String::new(),
            suffix: Suffix::Replace(dotted(extension)),
        }
    }

    /// Mirrors the tree, appending `suffix` to every name (`a.mp3` → `a.mp3.npy`).
    pub fn mirror_adding(suffix: &str) -> Self {
        PathRule {
            from_prefix: String::new(),
            to_prefix: String::new(),
            suffix: Suffix::Add(dotted(suffix)),
        }
    }

    /// The output path of `source`, or why it has none (it is outside `from_prefix`).
    pub fn apply(&self, source: &str) -> Result<String, OutsidePrefix> {
        let rest = source
            .strip_prefix(self.from_prefix.as_str())
            .ok_or_else(|| OutsidePrefix {
                path: source.to_owned(),
                prefix: self.from_prefix.clone(),
            })?;
        let moved = format!("{}{rest}", self.to_prefix);
        Ok(match &self.suffix {
            Suffix::Keep => moved,
            Suffix::Add(suffix) => format!("{moved}{suffix}"),
            Suffix::Replace(extension) => {
                let name_start = moved.rfind('/').map_or(0, |i| i + 1);
                // A leading dot names a hidden file, not an extension.
                let stem_end = match moved[name_start..].rfind('.') {
                    Some(0) | None => moved.len(),
                    Some(dot) => name_start + dot,
                };
                format!("{}{extension}", &moved[..stem_end])
            }
        })
    }
}

/// A source path a [`PathRule`] cannot map: it is outside the rule's source prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path} is not under the source prefix {prefix:?}")]
pub struct OutsidePrefix {
    /// The source path.
    pub path: String,
    /// The prefix it should start with.
    pub prefix: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_keeps_directories_and_hidden_names() {
        let rule = PathRule::mirror_with_extension("wav");
        assert_eq!(rule.apply("music/a.b.mp3").unwrap(), "music/a.b.wav");
        assert_eq!(rule.apply("dir.v2/name").unwrap(), "dir.v2/name.wav");
        assert_eq!(rule.apply(".hidden").unwrap(), ".hidden.wav");
    }

    #[test]
    fn add_and_move_between_prefixes() {
        assert_eq!(
            PathRule::mirror_adding(".npy").apply("a/x.mp3").unwrap(),
            "a/x.mp3.npy"
        );
        let rule = PathRule {
            from_prefix: "raw/".into(),
            to_prefix: "clean/v1/".into(),
            suffix: Suffix::Keep,
        };
        assert_eq!(rule.apply("raw/a/x.flac").unwrap(), "clean/v1/a/x.flac");
        assert!(rule
            .apply("other/x.flac")
            .unwrap_err()
            .to_string()
            .contains("not under"));
    }
}
