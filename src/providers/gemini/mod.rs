//! Google AI Studio's native Gemini API.

mod audio;
mod chat;
mod embeddings;
mod error;

pub use chat::{
    build_request, gemini_schema, translate_response, Gemini, GeminiEvents, GeminiStream,
};
pub use error::translate_error;

use super::caps::{Auth, Format};
use audio::GeminiAudio;
use embeddings::GeminiEmbeddings;

pub static FORMAT: Format = Format {
    chat: Some(&Gemini),
    embeddings: Some(&GeminiEmbeddings),
    transcription: Some(&GeminiAudio),
    speech: None,
    auth: Auth::Header("x-goog-api-key"),
};
