//! Server-side bounds on what one request may ask for.

use std::num::NonZeroUsize;

use sluice_models::service::TranslationLimits;

/// Server-side bounds on what one request may ask for.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Most records in one request.
    pub max_records: usize,
    /// Most source tokens in one record; `None` uses the model's `max_position_embeddings`.
    pub max_input_tokens: Option<usize>,
    /// Most beams a request may ask for.
    pub max_beams: NonZeroUsize,
    /// Most new tokens a request may ask for; also caps the model's default.
    pub max_new_tokens: NonZeroUsize,
}

impl Default for Limits {
    fn default() -> Self {
        let translation = TranslationLimits::default();
        Self {
            max_body_bytes: 4 << 20,
            max_records: 512,
            max_input_tokens: translation.max_input_tokens,
            max_beams: translation.max_beams,
            max_new_tokens: translation.max_new_tokens,
        }
    }
}

impl Limits {
    /// The bounds the translation service checks requests against.
    pub fn translation(&self) -> TranslationLimits {
        TranslationLimits {
            max_input_tokens: self.max_input_tokens,
            max_beams: self.max_beams,
            max_new_tokens: self.max_new_tokens,
        }
    }
}
