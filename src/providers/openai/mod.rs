//! The OpenAI wire format (OpenAI, Groq, Cerebras, SambaNova, NVIDIA NIM, OpenRouter,
//! Mistral, DeepSeek, xAI, local servers): requests pass through with the model spliced in.

mod chat;
mod error;

pub use chat::OpenAi;
pub use error::translate_error;

use super::caps::{Auth, Format};

pub static FORMAT: Format = Format {
    chat: Some(&OpenAi),
    error: translate_error,
    auth: Auth::Bearer,
};
