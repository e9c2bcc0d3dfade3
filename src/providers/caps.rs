//! Providers as capabilities: each wire format (one directory under `providers/`) says
//! what it serves in one [`Format`], and [`format()`] is the only place a [`ProviderKind`] is
//! matched. An endpoint a format does not serve is a `None` there, refused by the endpoint's
//! dispatcher, never a match arm per function.

use super::audio::{SpeechRequest, SttAnswer, SttRequest};
use super::embeddings::EmbeddingRequest;
use super::images::{Image, ImageRequest};
use super::media::MediaRequest;
use super::videos::{JobState, VideoRequest};
use super::{anthropic, gemini, openai, voyage, workers_ai, Translator};
use crate::config::ProviderKind;
use bytes::Bytes;
use http::header::InvalidHeaderValue;
use http::{HeaderName, HeaderValue};
use serde_json::Value;

/// What one wire format serves, and how it authenticates. (Its error translation goes with
/// its chat translator: `<kind>/error.rs`, wired in `<kind>/chat.rs`.)
pub struct Format {
    /// `/v1/chat/completions`.
    pub chat: Option<&'static dyn Translator>,
    /// `/v1/embeddings`.
    pub embeddings: Option<&'static dyn Embeddings>,
    /// `/v1/audio/transcriptions` and `/v1/audio/translations`.
    pub transcription: Option<&'static dyn Transcription>,
    /// `/v1/audio/speech`.
    pub speech: Option<&'static dyn Speech>,
    /// `/v1/images/generations`.
    pub images: Option<&'static dyn Images>,
    /// `/v1/videos`: asynchronous video jobs.
    pub videos: Option<&'static dyn Videos>,
    /// The header the key goes in.
    pub auth: Auth,
    /// Whether its chat API answers several choices (`n` > 1); models of formats that
    /// cannot are not routed requests with `n` > 1.
    pub several_choices: bool,
}

/// Embeddings in one format. The shared part (vector count check, float/base64 encoding,
/// the OpenAI list, token estimate) is `embeddings::response`.
pub trait Embeddings: Sync {
    /// Whether token-id input can be sent; formats that cannot are only given text
    /// ([`EmbeddingRequest::text_list`]).
    fn takes_token_ids(&self) -> bool {
        false
    }

    /// The native request for `model_id`, or why this provider cannot serve it.
    fn request(&self, req: &EmbeddingRequest, model_id: &str) -> Result<MediaRequest, String>;

    /// The vectors of a native answer (JSON arrays or base64 strings) in input order, and
    /// the prompt tokens the provider reported, if it did.
    fn vectors(&self, answer: &Value) -> Result<(Vec<Value>, Option<u64>), String>;
}

/// Speech-to-text (transcription, and translation into English) in one format.
pub trait Transcription: Sync {
    /// The native request for `model_id`, or why this provider cannot serve it.
    fn request(&self, req: &SttRequest, model_id: &str) -> Result<MediaRequest, String>;

    /// A native answer (its content type, its body) → a transcript to render in the format
    /// the client asked for, or the answer as it is (formats that speak OpenAI's).
    fn answer(&self, upstream_type: &str, body: Bytes) -> Result<SttAnswer, String>;
}

/// Text-to-speech in one format. Answers are audio bytes, or JSON read by
/// `audio::speech_from_json`.
pub trait Speech: Sync {
    /// The native request for `model_id`, or why this provider cannot serve it.
    fn request(&self, req: &SpeechRequest, model_id: &str) -> Result<MediaRequest, String>;
}

/// Image generation in one format.
pub trait Images: Sync {
    /// Whether one call makes several images (`n`); formats that cannot are called once
    /// per image.
    fn several_per_call(&self) -> bool {
        false
    }

    /// The native request for `count` images of `model_id` at `size` (the asked one, else
    /// the model's first), or why this provider cannot serve it.
    fn request(
        &self,
        req: &ImageRequest,
        model_id: &str,
        size: Option<(u32, u32)>,
        count: u32,
    ) -> Result<MediaRequest, String>;

    /// A native answer (its content type, its body) → its images.
    fn images(&self, upstream_type: &str, body: Bytes) -> Result<Vec<Image>, String>;
}

/// Video jobs in one format: a call that starts the job, a call that polls it, a download.
pub trait Videos: Sync {
    /// The native request that starts a job of `seconds` at `size` on `model_id`, or why
    /// this provider cannot serve it.
    fn create(
        &self,
        req: &VideoRequest,
        model_id: &str,
        seconds: u32,
        size: (u32, u32),
    ) -> Result<MediaRequest, String>;

    /// The provider's handle of the job it accepted (a job id, an operation name), from
    /// its answer to `create`.
    fn accepted(&self, body: &[u8]) -> Result<String, String>;

    /// The path (under the base URL) that polls the job `handle`.
    fn status_path(&self, handle: &str) -> String;

    /// A poll's answer → the job's state.
    fn status(&self, body: &[u8]) -> Result<JobState, String>;

    /// Where a completed job's video is: a path under the base URL, or the absolute URL
    /// the provider named.
    fn content_location(&self, handle: &str, state: &JobState) -> Result<String, String>;
}

/// How a format sends its key.
#[derive(Debug, Clone, Copy)]
pub enum Auth {
    /// `authorization: Bearer <key>`.
    Bearer,
    /// The key as it is, in this header.
    Header(&'static str),
}

impl Auth {
    /// The header carrying `key` (marked sensitive, so it is never logged).
    pub fn header(self, key: &str) -> Result<(HeaderName, HeaderValue), InvalidHeaderValue> {
        let (name, value) = match self {
            Auth::Bearer => (http::header::AUTHORIZATION, format!("Bearer {key}")),
            Auth::Header(name) => (HeaderName::from_static(name), key.to_string()),
        };
        let mut value = HeaderValue::from_str(&value)?;
        value.set_sensitive(true);
        Ok((name, value))
    }
}

/// The wire format of a provider kind.
pub fn format(kind: ProviderKind) -> &'static Format {
    match kind {
        ProviderKind::Openai => &openai::FORMAT,
        ProviderKind::Gemini => &gemini::FORMAT,
        ProviderKind::Anthropic => &anthropic::FORMAT,
        ProviderKind::WorkersAi => &workers_ai::FORMAT,
        ProviderKind::Voyage => &voyage::FORMAT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_go_in_each_formats_header() {
        let name = |kind| format(kind).auth.header("k").unwrap().0;
        assert_eq!(name(ProviderKind::Gemini), "x-goog-api-key");
        assert_eq!(name(ProviderKind::Anthropic), "x-api-key");
        for kind in [
            ProviderKind::Openai,
            ProviderKind::WorkersAi,
            ProviderKind::Voyage,
        ] {
            let (name, value) = format(kind).auth.header("k").unwrap();
            assert_eq!(
                (name.as_str(), value.to_str().unwrap()),
                ("authorization", "Bearer k")
            );
            assert!(value.is_sensitive());
        }
    }
}
