//! Google AI Studio's native Gemini API.

mod audio;
mod chat;
mod embeddings;
mod error;
mod images;
mod schema;
mod videos;

pub use chat::{build_request, translate_response, Gemini, GeminiEvents, GeminiStream};
pub use error::translate_error;
pub use schema::gemini_schema;

use super::caps::{Auth, Format};
use audio::GeminiAudio;
use embeddings::GeminiEmbeddings;
use images::GeminiImages;
use videos::GeminiVideos;

pub static FORMAT: Format = Format {
    chat: Some(&Gemini),
    embeddings: Some(&GeminiEmbeddings),
    transcription: Some(&GeminiAudio),
    speech: None,
    images: Some(&GeminiImages),
    videos: Some(&GeminiVideos),
    auth: Auth::Header("x-goog-api-key"),
    several_choices: true,
};
