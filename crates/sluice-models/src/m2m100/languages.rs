//! The 100 language codes of M2M100, in the order that fixes their token ids.
//!
//! Language tokens are not in `vocab.json`: the reference tokenizer appends `__xx__` tokens after
//! the vocabulary in exactly this order (fairseq's `m2m100` list), so the order is part of the format.

/// M2M100's language codes; `__{code}__` has id `vocab.json size + index`.
pub const M2M100_LANGUAGES: [&str; 100] = [
    "af", "am", "ar", "ast", "az", "ba", "be", "bg", "bn", "br", "bs", "ca", "ceb", "cs", "cy",
    "da", "de", "el", "en", "es", "et", "fa", "ff", "fi", "fr", "fy", "ga", "gd", "gl", "gu", "ha",
    "he", "hi", "hr", "ht", "hu", "hy", "id", "ig", "ilo", "is", "it", "ja", "jv", "ka", "kk",
    "km", "kn", "ko", "lb", "lg", "ln", "lo", "lt", "lv", "mg", "mk", "ml", "mn", "mr", "ms", "my",
    "ne", "nl", "no", "ns", "oc", "or", "pa", "pl", "ps", "pt", "ro", "ru", "sd", "si", "sk", "sl",
    "so", "sq", "sr", "ss", "su", "sv", "sw", "ta", "th", "tl", "tn", "tr", "uk", "ur", "uz", "vi",
    "wo", "xh", "yi", "yo", "zh", "zu",
];

/// The `wmt21` code list, used by checkpoints whose tokenizer_config says `language_codes: wmt21`.
pub const WMT21_LANGUAGES: [&str; 8] = ["en", "ha", "is", "ja", "cs", "ru", "zh", "de"];

/// Country codes and old ISO codes that people type for a language, with the code they mean.
const ALIASES: [(&str, &str); 16] = [
    ("jp", "ja"),
    ("cn", "zh"),
    ("kr", "ko"),
    ("ua", "uk"),
    ("gr", "el"),
    ("dk", "da"),
    ("se", "sv"),
    ("cz", "cs"),
    ("iw", "he"),
    ("in", "id"),
    ("ji", "yi"),
    ("jw", "jv"),
    ("nb", "no"),
    ("nn", "no"),
    ("br", "pt"),
    ("ir", "fa"),
];

/// The valid code a user most likely meant by an unknown `code`, if any.
///
/// Tried in order: case and region tags (`EN`, `pt-BR`, `zh_Hant`), country codes (`jp`),
/// then a near spelling.
pub fn suggest(code: &str, known: &[&'static str]) -> Option<&'static str> {
    let lower = code.trim().to_ascii_lowercase();
    let base = lower.split(['-', '_']).next().unwrap_or("");
    let find = |c: &str| known.iter().copied().find(|k| *k == c);
    find(base)
        .or_else(|| {
            ALIASES
                .iter()
                .find(|(alias, _)| *alias == base)
                .and_then(|(_, c)| find(c))
        })
        .or_else(|| sluice_core::closest(base, known.iter().copied()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_what_users_mean() {
        assert_eq!(suggest("jp", &M2M100_LANGUAGES), Some("ja"));
        assert_eq!(suggest("EN", &M2M100_LANGUAGES), Some("en"));
        assert_eq!(suggest("pt-BR", &M2M100_LANGUAGES), Some("pt"));
        assert_eq!(suggest("zh_Hant", &M2M100_LANGUAGES), Some("zh"));
        assert_eq!(suggest("cn", &M2M100_LANGUAGES), Some("zh"));
        assert_eq!(suggest("engl", &M2M100_LANGUAGES), Some("en"));
        assert_eq!(suggest("qqqqq", &M2M100_LANGUAGES), None);
    }
}
