//! Voyage AI: embeddings only. Its answers and errors have OpenAI's shapes (without chat,
//! `translator(Voyage)` is OpenAI's, whose error translation is the one used).

mod embeddings;

use super::caps::{Auth, Format};
use embeddings::VoyageEmbeddings;

pub static FORMAT: Format = Format {
    chat: None,
    embeddings: Some(&VoyageEmbeddings),
    transcription: None,
    speech: None,
    images: None,
    videos: None,
    auth: Auth::Bearer,
    several_choices: false,
};
