//! Types and helpers shared by every Sluice crate.
//!
//! The server, the pipeline engine and the CLI all move the same unit of work (a [`Record`]) and
//! all owe the user errors that say what to do; keeping both here stops each crate from growing its
//! own variant.

pub mod confine;
pub mod fs;
pub mod signal;
pub mod storage;

use serde::{Deserialize, Serialize};

/// One unit of work: an id chosen by the caller and the text to process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Caller's identifier, echoed back unchanged (duplicates allowed).
    pub id: String,
    /// The text to process.
    pub text: String,
}

/// Returns the candidate closest to `input`, when it is close enough to be a plausible typo.
///
/// Used to turn "unknown X" errors into "unknown X (did you mean Y?)".
pub fn closest<'a, I>(input: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let input_lower = input.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (c, strsim::jaro_winkler(&input_lower, &c.to_lowercase())))
        .filter(|(_, score)| *score >= 0.75)
        // The first of equally close candidates wins, so suggestions do not depend on ties.
        .fold(None::<(&str, f64)>, |best, (c, s)| match best {
            Some((_, b)) if b >= s => best,
            _ => Some((c, s)),
        })
        .map(|(c, _)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_suggests_a_near_name() {
        assert_eq!(
            closest("m2m100", ["m2m100_418m", "nllb"]),
            Some("m2m100_418m")
        );
        assert_eq!(closest("EN", ["en", "ja"]), Some("en"));
    }

    #[test]
    fn closest_suggests_nothing_for_unrelated_input() {
        assert_eq!(closest("xyzzy", ["en", "ja"]), None);
    }

    #[test]
    fn record_round_trips_through_json() {
        let r: Record = serde_json::from_str(r#"{"id":"1","text":"hi"}"#).unwrap();
        assert_eq!(r.id, "1");
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"id":"1","text":"hi"}"#
        );
    }
}
