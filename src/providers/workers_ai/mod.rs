//! Cloudflare Workers AI's REST API (`POST {base}/run/{model}`).

mod chat;
mod error;

pub use chat::{build_request, translate_response, WorkersAi, WorkersAiEvents, WorkersAiStream};
pub use error::translate_error;

use super::caps::{Auth, Format};

pub static FORMAT: Format = Format {
    chat: Some(&WorkersAi),
    error: translate_error,
    auth: Auth::Bearer,
};
