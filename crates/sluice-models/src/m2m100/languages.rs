//! The language codes of M2M100 and NLLB-200.
//!
//! M2M100's language tokens are not in `vocab.json`: the reference tokenizer appends `__xx__`
//! tokens after the vocabulary in exactly this order (fairseq's `m2m100` list), so the order is
//! part of the format. NLLB-200's codes (`eng_Latn`: ISO 639-3 and script) are tokens of its
//! `tokenizer.json`; the `/translation` contract names languages by ISO 639-1 codes, so those are
//! mapped to NLLB's here, in one table.

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

/// NLLB-200's language codes (fairseq's `nllb200` list, as transformers' `NllbTokenizer` has it).
pub const NLLB_LANGUAGES: [&str; 202] = [
    "ace_Arab", "ace_Latn", "acm_Arab", "acq_Arab", "aeb_Arab", "afr_Latn", "ajp_Arab", "aka_Latn",
    "amh_Ethi", "apc_Arab", "arb_Arab", "ars_Arab", "ary_Arab", "arz_Arab", "asm_Beng", "ast_Latn",
    "awa_Deva", "ayr_Latn", "azb_Arab", "azj_Latn", "bak_Cyrl", "bam_Latn", "ban_Latn", "bel_Cyrl",
    "bem_Latn", "ben_Beng", "bho_Deva", "bjn_Arab", "bjn_Latn", "bod_Tibt", "bos_Latn", "bug_Latn",
    "bul_Cyrl", "cat_Latn", "ceb_Latn", "ces_Latn", "cjk_Latn", "ckb_Arab", "crh_Latn", "cym_Latn",
    "dan_Latn", "deu_Latn", "dik_Latn", "dyu_Latn", "dzo_Tibt", "ell_Grek", "eng_Latn", "epo_Latn",
    "est_Latn", "eus_Latn", "ewe_Latn", "fao_Latn", "pes_Arab", "fij_Latn", "fin_Latn", "fon_Latn",
    "fra_Latn", "fur_Latn", "fuv_Latn", "gla_Latn", "gle_Latn", "glg_Latn", "grn_Latn", "guj_Gujr",
    "hat_Latn", "hau_Latn", "heb_Hebr", "hin_Deva", "hne_Deva", "hrv_Latn", "hun_Latn", "hye_Armn",
    "ibo_Latn", "ilo_Latn", "ind_Latn", "isl_Latn", "ita_Latn", "jav_Latn", "jpn_Jpan", "kab_Latn",
    "kac_Latn", "kam_Latn", "kan_Knda", "kas_Arab", "kas_Deva", "kat_Geor", "knc_Arab", "knc_Latn",
    "kaz_Cyrl", "kbp_Latn", "kea_Latn", "khm_Khmr", "kik_Latn", "kin_Latn", "kir_Cyrl", "kmb_Latn",
    "kon_Latn", "kor_Hang", "kmr_Latn", "lao_Laoo", "lvs_Latn", "lij_Latn", "lim_Latn", "lin_Latn",
    "lit_Latn", "lmo_Latn", "ltg_Latn", "ltz_Latn", "lua_Latn", "lug_Latn", "luo_Latn", "lus_Latn",
    "mag_Deva", "mai_Deva", "mal_Mlym", "mar_Deva", "min_Latn", "mkd_Cyrl", "plt_Latn", "mlt_Latn",
    "mni_Beng", "khk_Cyrl", "mos_Latn", "mri_Latn", "zsm_Latn", "mya_Mymr", "nld_Latn", "nno_Latn",
    "nob_Latn", "npi_Deva", "nso_Latn", "nus_Latn", "nya_Latn", "oci_Latn", "gaz_Latn", "ory_Orya",
    "pag_Latn", "pan_Guru", "pap_Latn", "pol_Latn", "por_Latn", "prs_Arab", "pbt_Arab", "quy_Latn",
    "ron_Latn", "run_Latn", "rus_Cyrl", "sag_Latn", "san_Deva", "sat_Beng", "scn_Latn", "shn_Mymr",
    "sin_Sinh", "slk_Latn", "slv_Latn", "smo_Latn", "sna_Latn", "snd_Arab", "som_Latn", "sot_Latn",
    "spa_Latn", "als_Latn", "srd_Latn", "srp_Cyrl", "ssw_Latn", "sun_Latn", "swe_Latn", "swh_Latn",
    "szl_Latn", "tam_Taml", "tat_Cyrl", "tel_Telu", "tgk_Cyrl", "tgl_Latn", "tha_Thai", "tir_Ethi",
    "taq_Latn", "taq_Tfng", "tpi_Latn", "tsn_Latn", "tso_Latn", "tuk_Latn", "tum_Latn", "tur_Latn",
    "twi_Latn", "tzm_Tfng", "uig_Arab", "ukr_Cyrl", "umb_Latn", "urd_Arab", "uzn_Latn", "vec_Latn",
    "vie_Latn", "war_Latn", "wol_Latn", "xho_Latn", "ydd_Hebr", "yor_Latn", "yue_Hant", "zho_Hans",
    "zho_Hant", "zul_Latn",
];

/// ISO 639-1 codes with the NLLB-200 code they mean: the individual language NLLB trained on for
/// a macrolanguage (`ar` → `arb_Arab`, Modern Standard Arabic; `fa` → `pes_Arab`; `zh` →
/// `zho_Hans`; `no` and `nb` → `nob_Latn`), the script the language is mostly written in.
pub const ISO_TO_NLLB: [(&str, &str); 136] = [
    ("af", "afr_Latn"),
    ("ak", "aka_Latn"),
    ("am", "amh_Ethi"),
    ("ar", "arb_Arab"),
    ("as", "asm_Beng"),
    ("ay", "ayr_Latn"),
    ("az", "azj_Latn"),
    ("ba", "bak_Cyrl"),
    ("be", "bel_Cyrl"),
    ("bg", "bul_Cyrl"),
    ("bm", "bam_Latn"),
    ("bn", "ben_Beng"),
    ("bo", "bod_Tibt"),
    ("bs", "bos_Latn"),
    ("ca", "cat_Latn"),
    ("cs", "ces_Latn"),
    ("cy", "cym_Latn"),
    ("da", "dan_Latn"),
    ("de", "deu_Latn"),
    ("dz", "dzo_Tibt"),
    ("ee", "ewe_Latn"),
    ("el", "ell_Grek"),
    ("en", "eng_Latn"),
    ("eo", "epo_Latn"),
    ("es", "spa_Latn"),
    ("et", "est_Latn"),
    ("eu", "eus_Latn"),
    ("fa", "pes_Arab"),
    ("ff", "fuv_Latn"),
    ("fi", "fin_Latn"),
    ("fj", "fij_Latn"),
    ("fo", "fao_Latn"),
    ("fr", "fra_Latn"),
    ("ga", "gle_Latn"),
    ("gd", "gla_Latn"),
    ("gl", "glg_Latn"),
    ("gn", "grn_Latn"),
    ("gu", "guj_Gujr"),
    ("ha", "hau_Latn"),
    ("he", "heb_Hebr"),
    ("hi", "hin_Deva"),
    ("hr", "hrv_Latn"),
    ("ht", "hat_Latn"),
    ("hu", "hun_Latn"),
    ("hy", "hye_Armn"),
    ("id", "ind_Latn"),
    ("ig", "ibo_Latn"),
    ("is", "isl_Latn"),
    ("it", "ita_Latn"),
    ("ja", "jpn_Jpan"),
    ("jv", "jav_Latn"),
    ("ka", "kat_Geor"),
    ("kg", "kon_Latn"),
    ("ki", "kik_Latn"),
    ("kk", "kaz_Cyrl"),
    ("km", "khm_Khmr"),
    ("kn", "kan_Knda"),
    ("ko", "kor_Hang"),
    ("kr", "knc_Latn"),
    ("ks", "kas_Arab"),
    ("ku", "kmr_Latn"),
    ("ky", "kir_Cyrl"),
    ("lb", "ltz_Latn"),
    ("lg", "lug_Latn"),
    ("li", "lim_Latn"),
    ("ln", "lin_Latn"),
    ("lo", "lao_Laoo"),
    ("lt", "lit_Latn"),
    ("lv", "lvs_Latn"),
    ("mg", "plt_Latn"),
    ("mi", "mri_Latn"),
    ("mk", "mkd_Cyrl"),
    ("ml", "mal_Mlym"),
    ("mn", "khk_Cyrl"),
    ("mr", "mar_Deva"),
    ("ms", "zsm_Latn"),
    ("mt", "mlt_Latn"),
    ("my", "mya_Mymr"),
    ("nb", "nob_Latn"),
    ("ne", "npi_Deva"),
    ("nl", "nld_Latn"),
    ("nn", "nno_Latn"),
    ("no", "nob_Latn"),
    ("ny", "nya_Latn"),
    ("oc", "oci_Latn"),
    ("om", "gaz_Latn"),
    ("or", "ory_Orya"),
    ("pa", "pan_Guru"),
    ("pl", "pol_Latn"),
    ("ps", "pbt_Arab"),
    ("pt", "por_Latn"),
    ("qu", "quy_Latn"),
    ("rn", "run_Latn"),
    ("ro", "ron_Latn"),
    ("ru", "rus_Cyrl"),
    ("rw", "kin_Latn"),
    ("sa", "san_Deva"),
    ("sc", "srd_Latn"),
    ("sd", "snd_Arab"),
    ("sg", "sag_Latn"),
    ("si", "sin_Sinh"),
    ("sk", "slk_Latn"),
    ("sl", "slv_Latn"),
    ("sm", "smo_Latn"),
    ("sn", "sna_Latn"),
    ("so", "som_Latn"),
    ("sq", "als_Latn"),
    ("sr", "srp_Cyrl"),
    ("ss", "ssw_Latn"),
    ("st", "sot_Latn"),
    ("su", "sun_Latn"),
    ("sv", "swe_Latn"),
    ("sw", "swh_Latn"),
    ("ta", "tam_Taml"),
    ("te", "tel_Telu"),
    ("tg", "tgk_Cyrl"),
    ("th", "tha_Thai"),
    ("ti", "tir_Ethi"),
    ("tk", "tuk_Latn"),
    ("tl", "tgl_Latn"),
    ("tn", "tsn_Latn"),
    ("tr", "tur_Latn"),
    ("ts", "tso_Latn"),
    ("tt", "tat_Cyrl"),
    ("tw", "twi_Latn"),
    ("ug", "uig_Arab"),
    ("uk", "ukr_Cyrl"),
    ("ur", "urd_Arab"),
    ("uz", "uzn_Latn"),
    ("vi", "vie_Latn"),
    ("wo", "wol_Latn"),
    ("xh", "xho_Latn"),
    ("yi", "ydd_Hebr"),
    ("yo", "yor_Latn"),
    ("zh", "zho_Hans"),
    ("zu", "zul_Latn"),
];

/// The NLLB-200 code for `code`: itself when it is one, else the code an ISO 639-1 code maps to.
pub fn nllb_code(code: &str) -> Option<&'static str> {
    NLLB_LANGUAGES
        .iter()
        .copied()
        .find(|c| *c == code)
        .or_else(|| {
            ISO_TO_NLLB
                .iter()
                .find(|(iso, _)| *iso == code)
                .map(|(_, c)| *c)
        })
}

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

/// `code` lower-cased without its region or script tag (`pt-BR` → `pt`, `zh_Hant` → `zh`).
fn base_code(code: &str) -> String {
    let lower = code.trim().to_ascii_lowercase();
    lower.split(['-', '_']).next().unwrap_or("").to_owned()
}

/// The NLLB-200 code a user most likely meant by an unknown `code`: the one its ISO 639-1 base
/// maps to (`EN`, `pt-BR`), else a near spelling (`fra`; `closest` ignores case, so `ENG_LATN`
/// finds `eng_Latn` too).
pub fn suggest_nllb(code: &str) -> Option<&'static str> {
    nllb_code(&base_code(code))
        .or_else(|| sluice_core::closest(code, NLLB_LANGUAGES.iter().copied()))
}

/// The valid code a user most likely meant by an unknown `code`, if any.
///
/// Tried in order: case and region tags (`EN`, `pt-BR`, `zh_Hant`), country codes (`jp`),
/// then a near spelling.
pub fn suggest(code: &str, known: &[&'static str]) -> Option<&'static str> {
    let base = &base_code(code);
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

    #[test]
    fn iso_codes_map_to_nllb_codes_it_has() {
        assert_eq!(nllb_code("en"), Some("eng_Latn"));
        assert_eq!(nllb_code("eng_Latn"), Some("eng_Latn"));
        assert_eq!(nllb_code("zh"), Some("zho_Hans"));
        assert_eq!(nllb_code("zho_Hant"), Some("zho_Hant"));
        assert_eq!(nllb_code("xx"), None);
        assert_eq!(suggest_nllb("EN"), Some("eng_Latn"));
        assert_eq!(suggest_nllb("ENG_LATN"), Some("eng_Latn"));
        assert_eq!(suggest_nllb("fra"), Some("fra_Latn"));
        for (iso, code) in ISO_TO_NLLB {
            assert_eq!(iso.len(), 2, "{iso}");
            assert!(NLLB_LANGUAGES.contains(&code), "{iso} -> {code}");
        }
    }
}
