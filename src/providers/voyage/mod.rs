//! Voyage AI: embeddings only. Its answers and errors have OpenAI's shapes.

mod embeddings;

pub(crate) use embeddings::embeddings_request;

use super::caps::{Auth, Format};

pub static FORMAT: Format = Format {
    chat: None,
    error: super::openai::translate_error,
    auth: Auth::Bearer,
};
