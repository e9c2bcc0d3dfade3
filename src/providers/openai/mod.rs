//! The OpenAI wire format (OpenAI, Groq, Cerebras, SambaNova, NVIDIA NIM, OpenRouter,
//! Mistral, DeepSeek, xAI, local servers): requests pass through with the model spliced in.

mod audio;
mod chat;
mod embeddings;
mod error;
mod images;
mod videos;

pub use chat::OpenAi;
pub use error::translate_error;

pub(crate) use embeddings::OpenAiEmbeddings;

use super::caps::{Auth, Format};
use audio::OpenAiAudio;
use images::OpenAiImages;
use videos::OpenAiVideos;

pub static FORMAT: Format = Format {
    chat: Some(&OpenAi),
    embeddings: Some(&OpenAiEmbeddings),
    transcription: Some(&OpenAiAudio),
    speech: Some(&OpenAiAudio),
    images: Some(&OpenAiImages),
    videos: Some(&OpenAiVideos),
    auth: Auth::Bearer,
    several_choices: true,
};
