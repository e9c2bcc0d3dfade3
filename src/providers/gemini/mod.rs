//! Google AI Studio's native Gemini API.

mod chat;
mod error;

pub use chat::{
    build_request, gemini_schema, translate_response, Gemini, GeminiEvents, GeminiStream,
};
pub use error::translate_error;

use super::caps::{Auth, Format};

pub static FORMAT: Format = Format {
    chat: Some(&Gemini),
    error: translate_error,
    auth: Auth::Header("x-goog-api-key"),
};
