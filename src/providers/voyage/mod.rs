//! Voyage AI: embeddings only. Its answers and errors have OpenAI's shapes.

mod embeddings;

use super::caps::{Auth, Format};
use embeddings::VoyageEmbeddings;

pub static FORMAT: Format = Format {
    chat: None,
    embeddings: Some(&VoyageEmbeddings),
    transcription: None,
    speech: None,
    error: super::openai::translate_error,
    auth: Auth::Bearer,
};
