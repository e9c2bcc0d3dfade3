//! The chat request, parsed once into a borrowed view, and rewritten for the upstream.
//!
//! Parsing validates the whole body as JSON but only materialises the fields routing needs;
//! everything else stays as raw bytes. The rewrite splices the new model id into the original
//! bytes, so the upstream receives exactly what the client sent except for `model`.

use crate::errors::ApiError;
use crate::routing::Needs;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::ops::Range;

/// The fields of a chat completion request the gateway looks at.
#[derive(Debug)]
pub struct ChatRequest<'a> {
    /// The `model` field, if present and not null.
    pub model: Option<Cow<'a, str>>,
    /// Byte range of the `model` value (quotes included) in the body.
    model_span: Option<Range<usize>>,
    pub stream: bool,
    /// `stream_options.include_usage`: the client wants the usage chunk.
    pub include_usage: bool,
    /// Whether the body has a `stream_options` field at all.
    pub has_stream_options: bool,
    pub needs: Needs,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// The top-level fields, `messages` read as `M` and `tools`/`functions` as `L`:
/// summarised in the same pass ([`Summary`], [`Listed`]) or kept raw for the careful path
/// (`&RawValue`).
#[derive(Deserialize)]
struct Fields<'a, M, L> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    messages: Option<M>,
    #[serde(borrow)]
    stream: Option<&'a RawValue>,
    tools: Option<L>,
    functions: Option<L>,
    #[serde(borrow)]
    response_format: Option<&'a RawValue>,
    #[serde(borrow)]
    max_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    max_completion_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    reasoning_effort: Option<&'a RawValue>,
    #[serde(borrow)]
    stream_options: Option<&'a RawValue>,
    #[serde(borrow)]
    n: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    role: Option<&'a RawValue>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
}

/// A `Visitor`'s `expecting` and its methods for JSON's scalars (null, booleans, numbers,
/// strings), each answering `$unusual`: the one-pass readings below take any value without
/// failing.
macro_rules! scalars_are_unusual {
    ($unusual:expr) => {
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($unusual)
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($unusual)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($unusual)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($unusual)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($unusual)
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok($unusual)
        }
    };
}

/// `messages` summarised in the parse of the whole body, so its text is read once.
///
/// Reading it never fails on its shape (only on broken JSON, like any skipped value):
/// anything but a non-empty array of plain messages is `Unusual`, and `parse_chat` then
/// takes the careful path, which names the problem.
enum Summary {
    Plain(MessageNeeds),
    Unusual,
}

impl<'de> Deserialize<'de> for Summary {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Summary, D::Error> {
        d.deserialize_any(SummaryVisitor)
    }
}

struct SummaryVisitor;

impl<'de> serde::de::Visitor<'de> for SummaryVisitor {
    type Value = Summary;

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Summary, A::Error> {
        let mut needs = MessageNeeds::default();
        let mut plain = true;
        let mut count = 0usize;
        while let Some(m) = seq.next_element::<PlainMessage<'de>>()? {
            count += 1;
            // After the first unusual message the rest is only read through.
            plain = plain
                && match m {
                    PlainMessage::Plain { role, content } => {
                        role.is_some_and(|r| r.get().starts_with('"')) && needs.add(content).is_ok()
                    }
                    PlainMessage::Unusual => false,
                };
        }
        Ok(match plain && count > 0 {
            true => Summary::Plain(needs),
            false => Summary::Unusual,
        })
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Summary, A::Error> {
        read_through_map(map).map(|()| Summary::Unusual)
    }

    scalars_are_unusual!(Summary::Unusual);
}

/// `tools` or `functions` read in the parse of the whole body: an array (whether it has
/// items), or anything else (`Unusual`: the careful path names the problem).
enum Listed {
    Array { items: bool },
    Unusual,
}

impl Listed {
    fn non_empty(list: Option<Listed>) -> bool {
        matches!(list, Some(Listed::Array { items: true }))
    }
}

impl<'de> Deserialize<'de> for Listed {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Listed, D::Error> {
        d.deserialize_any(ListedVisitor)
    }
}

struct ListedVisitor;

impl<'de> serde::de::Visitor<'de> for ListedVisitor {
    type Value = Listed;

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Listed, A::Error> {
        let mut items = false;
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
            items = true;
        }
        Ok(Listed::Array { items })
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Listed, A::Error> {
        read_through_map(map).map(|()| Listed::Unusual)
    }

    scalars_are_unusual!(Listed::Unusual);
}

/// One element of `messages` as the one-pass reading sees it: an object with at most one
/// `role` and one `content` (other keys skipped), or anything else.
enum PlainMessage<'a> {
    Plain {
        role: Option<&'a RawValue>,
        content: Option<&'a RawValue>,
    },
    Unusual,
}

impl<'de> Deserialize<'de> for PlainMessage<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<PlainMessage<'de>, D::Error> {
        d.deserialize_any(PlainMessageVisitor)
    }
}

struct PlainMessageVisitor;

impl<'de> serde::de::Visitor<'de> for PlainMessageVisitor {
    type Value = PlainMessage<'de>;

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> Result<PlainMessage<'de>, A::Error> {
        let (mut role, mut content) = (None, None);
        let (mut has_role, mut has_content, mut twice) = (false, false, false);
        while let Some(key) = map.next_key::<MessageKey>()? {
            match key {
                MessageKey::Role => {
                    twice |= std::mem::replace(&mut has_role, true);
                    role = map.next_value::<Option<&'de RawValue>>()?;
                }
                MessageKey::Content => {
                    twice |= std::mem::replace(&mut has_content, true);
                    content = map.next_value::<Option<&'de RawValue>>()?;
                }
                MessageKey::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(match twice {
            false => PlainMessage::Plain { role, content },
            true => PlainMessage::Unusual,
        })
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> Result<PlainMessage<'de>, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(PlainMessage::Unusual)
    }

    scalars_are_unusual!(PlainMessage::Unusual);
}

/// Skips the rest of an object.
fn read_through_map<'de, A: serde::de::MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map
        .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
        .is_some()
    {}
    Ok(())
}

/// A key of a message object, matched as the derived `Message` matches it (escapes
/// resolved).
enum MessageKey {
    Role,
    Content,
    Other,
}

impl<'de> Deserialize<'de> for MessageKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<MessageKey, D::Error> {
        struct KeyVisitor;
        impl serde::de::Visitor<'_> for KeyVisitor {
            type Value = MessageKey;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E>(self, key: &str) -> Result<MessageKey, E> {
                Ok(match key {
                    "role" => MessageKey::Role,
                    "content" => MessageKey::Content,
                    _ => MessageKey::Other,
                })
            }
        }
        d.deserialize_identifier(KeyVisitor)
    }
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ResponseFormat<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
}

/// Tokens charged for one image part by the estimator (OpenAI's high-detail tile count for a
/// typical image is in this range; providers differ, so this errs on the large side).
const IMAGE_TOKENS: u32 = 1_000;
/// Per-message overhead in tokens (role and separators).
const MESSAGE_TOKENS: u32 = 4;

fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

fn bad_type(param: &'static str, expected: &str) -> ApiError {
    ApiError::invalid_param(param, format!("`{param}` must be {expected}."))
}

fn parse_u32(raw: Option<&RawValue>, param: &'static str) -> Result<Option<u32>, ApiError> {
    match raw {
        None => Ok(None),
        Some(r) if is_null(r) => Ok(None),
        Some(r) => serde_json::from_str::<u32>(r.get())
            .map(Some)
            .map_err(|_| bad_type(param, "a non-negative integer")),
    }
}

/// Parses and validates a chat completion body.
///
/// One pass over the body: `messages` is summarised as it is read ([`Summary`]). A body
/// whose messages are anything but plain message objects, or that fails anywhere, is read
/// again by the careful path ([`parse_chat_careful`]), which names the exact problem; both
/// give the same answer for every body (a proptest holds them to it).
pub fn parse_chat(body: &[u8]) -> Result<ChatRequest<'_>, ApiError> {
    let text = body_text(body)?;
    if let Ok(mut fields) = serde_json::from_str::<Fields<Summary, Listed>>(text) {
        let lists_plain = [&fields.tools, &fields.functions]
            .iter()
            .all(|l| !matches!(l, Some(Listed::Unusual)));
        if let (Some(Summary::Plain(m)), true) = (fields.messages.take(), lists_plain) {
            return finish(body, fields, |_| Ok(m), |l, _| Ok(Listed::non_empty(l)));
        }
    }
    parse_chat_careful(body)
}

/// The body as text, refused when empty or not UTF-8.
fn body_text(body: &[u8]) -> Result<&str, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            "The request body is empty: send a JSON chat completion request.",
        ));
    }
    // serde_json skips ignored strings without checking their UTF-8 (found by fuzzing):
    // check the whole body, so nothing invalid is ever forwarded to a provider.
    std::str::from_utf8(body)
        .map_err(|e| ApiError::invalid(format!("The request body is not valid UTF-8 JSON: {e}.")))
}

/// Parses a chat completion body field by field, `messages` in a second pass, so that any
/// problem gets its own message. What [`parse_chat`] falls back to; public so that the fuzz
/// target can hold the two to the same answer.
pub fn parse_chat_careful(body: &[u8]) -> Result<ChatRequest<'_>, ApiError> {
    let text = body_text(body)?;
    let fields: Fields<&RawValue, &RawValue> = serde_json::from_str(text).map_err(|e| {
        if e.is_data() {
            // Valid JSON, wrong shape (not an object, duplicate field, …).
            ApiError::invalid(format!(
                "The request body is not a chat completion request: {e}."
            ))
        } else {
            ApiError::invalid(format!("The request body is not valid JSON: {e}."))
        }
    })?;
    finish(body, fields, message_needs, |raw, param| {
        match raw.filter(|r| !is_null(r)) {
            None => Ok(false),
            Some(r) => serde_json::from_str::<Vec<&RawValue>>(r.get())
                .map(|items| !items.is_empty())
                .map_err(|_| bad_type(param, "an array")),
        }
    })
}

/// What `messages` adds to a request's needs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct MessageNeeds {
    /// Per-message and per-image tokens (the text's share is added from `chars`).
    tokens: u32,
    /// Bytes of message text (JSON as sent).
    chars: u64,
    vision: bool,
}

impl MessageNeeds {
    /// Counts one message's `content` (`None`: absent or null); `Err` names what is wrong.
    fn add(&mut self, content: Option<&RawValue>) -> Result<(), ApiError> {
        self.tokens = self.tokens.saturating_add(MESSAGE_TOKENS);
        let Some(content) = content else {
            return Ok(());
        };
        let bad_content = || bad_type("messages", "content that is a string or an array of parts");
        match content.get().as_bytes().first() {
            Some(b'"') => self.chars += content.get().len() as u64,
            Some(b'n') => {}
            Some(b'[') => {
                let parts: Vec<Part> =
                    serde_json::from_str(content.get()).map_err(|_| bad_content())?;
                for p in parts {
                    match p.kind.as_deref() {
                        Some("image_url") | Some("image") => {
                            self.vision = true;
                            self.tokens = self.tokens.saturating_add(IMAGE_TOKENS);
                        }
                        _ => self.chars += p.text.map_or(0, |t| t.get().len() as u64),
                    }
                }
            }
            _ => return Err(bad_content()),
        }
        Ok(())
    }
}

/// The careful reading of `messages`: each problem named.
fn message_needs(raw: Option<&RawValue>) -> Result<MessageNeeds, ApiError> {
    let messages_raw = raw
        .filter(|r| !is_null(r))
        .ok_or_else(|| ApiError::invalid_param("messages", "`messages` is required."))?;
    let messages: Vec<Message> = serde_json::from_str(messages_raw.get())
        .map_err(|_| bad_type("messages", "an array of message objects"))?;
    if messages.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "`messages` must contain at least one message.",
        ));
    }
    let mut needs = MessageNeeds::default();
    for m in &messages {
        if !m.role.is_some_and(|r| r.get().starts_with('"')) {
            return Err(bad_type(
                "messages",
                "an array of objects that each have a string `role`",
            ));
        }
        needs.add(m.content)?;
    }
    Ok(needs)
}

/// Checks the fields in order and makes the request; `messages` is read by `read_messages`
/// and `tools`/`functions` by `non_empty_list` (whether the array has items), each at its
/// place in that order.
fn finish<'a, M, L>(
    body: &'a [u8],
    fields: Fields<'a, M, L>,
    read_messages: impl FnOnce(Option<M>) -> Result<MessageNeeds, ApiError>,
    non_empty_list: impl Fn(Option<L>, &'static str) -> Result<bool, ApiError>,
) -> Result<ChatRequest<'a>, ApiError> {
    let (model, model_span) = match fields.model {
        None => (None, None),
        Some(r) if is_null(r) => (None, Some(span_of(body, r))),
        Some(r) => {
            let name: Cow<str> =
                serde_json::from_str(r.get()).map_err(|_| bad_type("model", "a string"))?;
            (Some(name), Some(span_of(body, r)))
        }
    };

    let stream = match fields.stream {
        None => false,
        Some(r) if is_null(r) => false,
        Some(r) => {
            serde_json::from_str::<bool>(r.get()).map_err(|_| bad_type("stream", "a boolean"))?
        }
    };

    let stream_options = fields.stream_options.filter(|r| !is_null(r));
    let include_usage = match stream_options {
        None => false,
        Some(r) => serde_json::from_str::<StreamOptions>(r.get())
            .map_err(|_| bad_type("stream_options", "an object"))?
            .include_usage
            .unwrap_or(false),
    };

    let m = read_messages(fields.messages)?;
    let mut needs = Needs {
        stream,
        vision: m.vision,
        // Estimator: ~4 bytes of JSON text per token (English averages 4 characters per
        // token with the common BPE vocabularies), plus fixed costs for messages and images.
        prompt_tokens: m
            .tokens
            .saturating_add(u32::try_from(m.chars / 4).unwrap_or(u32::MAX)),
        ..Needs::default()
    };

    for (list, param) in [(fields.tools, "tools"), (fields.functions, "functions")] {
        needs.tools |= non_empty_list(list, param)?;
    }
    if let Some(r) = fields.response_format.filter(|r| !is_null(r)) {
        let rf: ResponseFormat = serde_json::from_str(r.get())
            .map_err(|_| bad_type("response_format", "an object with a string `type`"))?;
        needs.json = matches!(rf.kind.as_ref(), "json_object" | "json_schema");
    }
    match parse_u32(fields.n, "n")? {
        Some(0) => return Err(bad_type("n", "an integer of at least 1")),
        Some(n) => needs.several_choices = n > 1,
        None => {}
    }
    needs.max_output_tokens =
        match parse_u32(fields.max_completion_tokens, "max_completion_tokens")? {
            Some(v) => Some(v),
            None => parse_u32(fields.max_tokens, "max_tokens")?,
        };
    if let Some(r) = fields.reasoning_effort.filter(|r| !is_null(r)) {
        let effort: Cow<str> =
            serde_json::from_str(r.get()).map_err(|_| bad_type("reasoning_effort", "a string"))?;
        needs.reasoning_effort = match effort.as_ref() {
            "minimal" | "low" => Some(crate::config::Tier::Low),
            "medium" => Some(crate::config::Tier::Medium),
            "high" => Some(crate::config::Tier::High),
            _ => {
                return Err(bad_type(
                    "reasoning_effort",
                    "one of minimal, low, medium, high",
                ))
            }
        };
    }

    Ok(ChatRequest {
        model,
        model_span,
        stream,
        include_usage,
        has_stream_options: stream_options.is_some(),
        needs,
    })
}

/// Byte range of a borrowed raw value inside the buffer it was parsed from.
fn span_of(body: &[u8], raw: &RawValue) -> Range<usize> {
    let start = raw.get().as_ptr() as usize - body.as_ptr() as usize;
    start..start + raw.get().len()
}

impl ChatRequest<'_> {
    /// The body to send upstream: the client's bytes with `model` set to `model`, and, for a
    /// stream whose client did not ask for usage, `stream_options.include_usage` added so
    /// the gateway can still account tokens (the translator hides that chunk again).
    pub fn rewrite_for_upstream(&self, body: &[u8], model: &str) -> Vec<u8> {
        let quoted = serde_json::to_string(model).unwrap_or_default();
        let inject_usage = self.stream && !self.has_stream_options;
        let mut out = Vec::with_capacity(body.len() + quoted.len() + 48);
        // Insertions go right after the opening brace; `messages` is required, so the object
        // is never empty and a comma may always follow.
        let open = body.iter().position(|&b| b == b'{').unwrap_or(0);
        out.extend_from_slice(&body[..=open]);
        if inject_usage {
            out.extend_from_slice(br#""stream_options":{"include_usage":true},"#);
        }
        match &self.model_span {
            Some(span) => {
                out.extend_from_slice(&body[open + 1..span.start]);
                out.extend_from_slice(quoted.as_bytes());
                out.extend_from_slice(&body[span.end..]);
            }
            None => {
                out.extend_from_slice(b"\"model\":");
                out.extend_from_slice(quoted.as_bytes());
                out.push(b',');
                out.extend_from_slice(&body[open + 1..]);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_of(body: &str) -> ApiError {
        parse_chat(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn parses_the_fields_routing_needs() {
        let body = br#"{"model":"auto","stream":true,"messages":[{"role":"user","content":[{"type":"text","text":"hi"},{"type":"image_url","image_url":{"url":"data:"}}]}],"tools":[{"type":"function"}],"response_format":{"type":"json_object"},"max_tokens":100}"#;
        let r = parse_chat(body).unwrap();
        assert_eq!(r.model.as_deref(), Some("auto"));
        assert!(r.stream && r.needs.stream && r.needs.vision && r.needs.tools && r.needs.json);
        assert_eq!(r.needs.max_output_tokens, Some(100));
        assert!(r.needs.prompt_tokens >= IMAGE_TOKENS);
    }

    #[test]
    fn rewrite_keeps_every_other_byte() {
        let body = br#"{ "messages": [{"role":"user","content":"x"}],  "model" : "groq/llama" , "temperature": 0.5 }"#;
        let r = parse_chat(body).unwrap();
        let out = r.rewrite_for_upstream(body, "llama-3.3-70b-versatile");
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{ "messages": [{"role":"user","content":"x"}],  "model" : "llama-3.3-70b-versatile" , "temperature": 0.5 }"#
        );
    }

    #[test]
    fn rewrite_inserts_missing_model() {
        let body = br#" {"messages":[{"role":"user","content":"x"}]}"#;
        let r = parse_chat(body).unwrap();
        let out = r.rewrite_for_upstream(body, "m\"1");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "m\"1");
        assert_eq!(v["messages"][0]["content"], "x");
    }

    #[test]
    fn streams_without_stream_options_ask_for_usage() {
        let body = br#"{"model":"a","stream":true,"messages":[{"role":"user","content":"x"}]}"#;
        let r = parse_chat(body).unwrap();
        assert!(!r.include_usage);
        let out = r.rewrite_for_upstream(body, "b");
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"stream_options":{"include_usage":true},"model":"b","stream":true,"messages":[{"role":"user","content":"x"}]}"#
        );
        let body = br#"{"model":"a","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"x"}]}"#;
        let r = parse_chat(body).unwrap();
        assert!(r.include_usage);
        let out = r.rewrite_for_upstream(body, "b");
        let want = String::from_utf8_lossy(body).replacen(r#""model":"a""#, r#""model":"b""#, 1);
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }

    #[test]
    fn escaped_model_names_are_unescaped() {
        let body = br#"{"model":"a\/b","messages":[{"role":"user","content":"x"}]}"#;
        assert_eq!(parse_chat(body).unwrap().model.as_deref(), Some("a/b"));
    }

    #[test]
    fn bad_inputs_are_named() {
        assert!(err_of("").message.contains("empty"));
        assert!(err_of("{not json").message.contains("not valid JSON"));
        assert!(err_of("[1,2]").message.contains("not a chat completion"));
        assert_eq!(err_of(r#"{"model":5,"messages":[]}"#).param, Some("model"));
        assert_eq!(
            err_of(r#"{"model":"a","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#)
                .param,
            Some("stream")
        );
        assert_eq!(err_of(r#"{"model":"a"}"#).param, Some("messages"));
        assert_eq!(
            err_of(r#"{"model":"a","messages":"hi"}"#).param,
            Some("messages")
        );
        assert_eq!(
            err_of(r#"{"model":"a","messages":[]}"#).param,
            Some("messages")
        );
        assert_eq!(
            err_of(r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":-1}"#).param,
            Some("max_tokens")
        );
        assert_eq!(
            err_of(r#"{"messages":[{"content":"x"}]}"#).param,
            Some("messages")
        );
        assert!(err_of(r#"{"model":"a","model":"b","messages":[]}"#)
            .message
            .contains("duplicate"));
    }

    #[test]
    fn invalid_utf8_anywhere_is_refused() {
        // Regression (fuzz: parse_chat): invalid UTF-8 inside an ignored field was accepted.
        let mut body =
            br#"{"messages":[{"role":"user","content":"x"}],"other":{"k":"v"}}"#.to_vec();
        let at = body.len() - 5;
        body[at] = 0xff;
        assert!(err_of_bytes(&body).message.contains("UTF-8"));
    }

    fn err_of_bytes(body: &[u8]) -> ApiError {
        parse_chat(body).unwrap_err()
    }

    #[test]
    fn n_above_one_needs_several_choices() {
        let r = parse_chat(br#"{"messages":[{"role":"user","content":"x"}],"n":3}"#).unwrap();
        assert!(r.needs.several_choices);
        let r = parse_chat(br#"{"messages":[{"role":"user","content":"x"}],"n":1}"#).unwrap();
        assert!(!r.needs.several_choices);
        assert_eq!(
            err_of(r#"{"messages":[{"role":"user","content":"x"}],"n":0}"#).param,
            Some("n")
        );
    }

    #[test]
    fn token_estimate_grows_with_text() {
        let small = parse_chat(br#"{"messages":[{"role":"user","content":"hi"}]}"#).unwrap();
        let text = "x".repeat(4000);
        let big_body = format!(r#"{{"messages":[{{"role":"user","content":"{text}"}}]}}"#);
        let big = parse_chat(big_body.as_bytes()).unwrap();
        assert!(big.needs.prompt_tokens >= 1000 && small.needs.prompt_tokens < 10);
    }

    /// A message object's members, any subset in any order, some repeated: the shapes the
    /// one-pass reading must either summarise as the careful path would, or hand over.
    fn message() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let member = prop_oneof![
            Just(r#""role":"user""#),
            Just(r#""role":"a\"b""#),
            Just(r#""role":null"#),
            Just(r#""role":5"#),
            Just(r#""rol\u0065":"assistant""#),
            Just(r#""content":"hello there""#),
            Just(r#""content":null"#),
            Just(r#""content":7"#),
            Just(r#""content":{}"#),
            Just(r#""content":[{"type":"text","text":"abc"}]"#),
            Just(r#""content":[{"type":"image_url","image_url":{"url":"x"}}]"#),
            Just(r#""content":[{"type":5}]"#),
            Just(r#""content":[1]"#),
            Just(r#""name":"x""#),
            Just(r#""x":[1,{"a":[2]}]"#),
        ];
        prop_oneof![
            8 => proptest::collection::vec(member, 0..5).prop_map(|m| format!("{{{}}}", m.join(","))),
            1 => Just(r#"["user","hi"]"#.to_string()),
            1 => Just("null".to_string()),
            1 => Just(r#""text""#.to_string()),
        ]
    }

    /// A body around generated messages, with other fields valid or not, sometimes cut short.
    fn body() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let messages = prop_oneof![
            6 => proptest::collection::vec(message(), 0..5).prop_map(|m| format!(r#""messages":[{}]"#, m.join(","))),
            1 => Just(r#""messages":null"#.to_string()),
            1 => Just(r#""messages":{"role":"user"}"#.to_string()),
            1 => Just(r#""messages":"hi""#.to_string()),
            1 => Just(String::new()),
        ];
        let other = proptest::collection::vec(
            prop_oneof![
                Just(r#""model":"auto""#),
                Just(r#""model":5"#),
                Just(r#""stream":true"#),
                Just(r#""stream":"x""#),
                Just(r#""n":0"#),
                Just(r#""tools":[{"type":"function"}]"#),
                Just(r#""tools":[]"#),
                Just(r#""tools":null"#),
                Just(r#""tools":{"a":1}"#),
                Just(r#""functions":[1,[2]]"#),
                Just(r#""functions":"f""#),
                Just(r#""max_tokens":-1"#),
                Just(r#""temperature":0.5"#),
            ],
            0..3,
        );
        let cut = proptest::bool::weighted(0.2);
        (messages, other, cut, 0usize..400).prop_map(|(m, o, cut, at)| {
            let mut members: Vec<String> = o.into_iter().map(String::from).collect();
            if !m.is_empty() {
                members.insert(members.len() / 2, m);
            }
            let text = format!("{{{}}}", members.join(","));
            match cut {
                true => text[..at.min(text.len())].to_string(),
                false => text,
            }
        })
    }

    #[test]
    fn plain_messages_are_summarised_in_the_one_pass() {
        let text = r#"{"model":"auto","messages":[{"role":"system","content":"Be brief."},
            {"role":"user","name":"x","content":[{"type":"text","text":"hi"},
            {"type":"image_url","image_url":{"url":"data:,"}}]}]}"#;
        let fields: Fields<Summary, Listed> = serde_json::from_str(text).unwrap();
        let Some(Summary::Plain(m)) = fields.messages else {
            panic!("plain messages were handed to the careful path");
        };
        let expected = MessageNeeds {
            tokens: 2 * MESSAGE_TOKENS + IMAGE_TOKENS,
            chars: ("\"Be brief.\"".len() + "\"hi\"".len()) as u64,
            vision: true,
        };
        assert_eq!(m, expected);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        #[test]
        fn the_one_pass_reading_answers_as_the_careful_one(text in body()) {
            let fast = format!("{:?}", parse_chat(text.as_bytes()));
            let careful = format!("{:?}", parse_chat_careful(text.as_bytes()));
            proptest::prop_assert_eq!(fast, careful, "{}", text);
        }
    }
}
