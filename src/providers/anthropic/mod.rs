//! Anthropic's Messages API (chat only: Anthropic has no embeddings or audio API).

mod chat;
mod error;

pub use chat::{
    build_request, translate_response, Anthropic, AnthropicEvents, AnthropicStream, API_VERSION,
    DEFAULT_MAX_TOKENS, JSON_TOOL,
};
pub use error::translate_error;

use super::caps::{Auth, Format};

pub static FORMAT: Format = Format {
    chat: Some(&Anthropic),
    embeddings: None,
    transcription: None,
    speech: None,
    images: None,
    videos: None,
    auth: Auth::Header("x-api-key"),
    several_choices: false,
};
