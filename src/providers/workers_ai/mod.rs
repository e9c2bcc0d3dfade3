//! Cloudflare Workers AI's REST API (`POST {base}/run/{model}`).

mod audio;
mod chat;
mod embeddings;
mod error;
mod images;

pub use chat::{build_request, translate_response, WorkersAi, WorkersAiEvents, WorkersAiStream};
pub use error::translate_error;

use super::caps::{Auth, Format};
use audio::WorkersAiAudio;
use embeddings::WorkersAiEmbeddings;
use images::WorkersAiImages;

pub static FORMAT: Format = Format {
    chat: Some(&WorkersAi),
    embeddings: Some(&WorkersAiEmbeddings),
    transcription: Some(&WorkersAiAudio),
    speech: Some(&WorkersAiAudio),
    images: Some(&WorkersAiImages),
    videos: None,
    auth: Auth::Bearer,
    several_choices: false,
};
