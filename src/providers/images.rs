//! `POST /v1/images/generations`: the client's request parsed once (OpenAI's shape), handed
//! to the provider's format (`<kind>/images.rs`, see [`Images`](super::Images)), and the
//! native answer read into [`Image`]s, which the endpoint renders as `b64_json` or `url`.

use super::format;
use super::media::{json_body, model_field, unb64, MediaRequest};
use crate::config::{parse_size, ProviderKind};
use crate::errors::ApiError;
use bytes::Bytes;
use serde_json::{Map, Value};

/// Images one request may ask for (`n`).
pub const MAX_IMAGES: u32 = 4;

/// How the client wants its images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFormat {
    B64Json,
    Url,
    /// Not said: whatever the provider gives (OpenAI's models differ), else `b64_json`.
    Unset,
}

/// The client's image request, parsed once.
#[derive(Debug, Clone)]
pub struct ImageRequest {
    /// The body as sent (openai-kind providers get it with `model` and `n` rewritten).
    pub body: Map<String, Value>,
    pub model: Option<String>,
    pub prompt: String,
    pub n: u32,
    /// `size`, unless absent or `auto`.
    pub size: Option<(u32, u32)>,
    pub format: ResponseFormat,
}

pub fn parse(raw: &[u8]) -> Result<ImageRequest, ApiError> {
    let body = json_body(raw, "{\"model\": …, \"prompt\": …}")?;
    let model = model_field(&body)?;
    let prompt = match body.get("prompt") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        _ => {
            return Err(ApiError::invalid_param(
                "prompt",
                "`prompt` is required: a non-empty string describing the image.",
            ))
        }
    };
    let n = match body.get("n") {
        None | Some(Value::Null) => 1,
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=u64::from(MAX_IMAGES)).contains(n))
            .ok_or_else(|| {
                ApiError::invalid_param(
                    "n",
                    format!("`n` must be an integer from 1 to {MAX_IMAGES}."),
                )
            })? as u32,
    };
    let size = match body.get("size") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s == "auto" => None,
        Some(Value::String(s)) => Some(parse_size(s).ok_or_else(|| {
            ApiError::invalid_param(
                "size",
                format!("`size` must be WIDTHxHEIGHT (like \"1024x1024\") or \"auto\", not `{s}`."),
            )
        })?),
        Some(_) => return Err(ApiError::invalid_param("size", "`size` must be a string.")),
    };
    let format = match body.get("response_format") {
        None | Some(Value::Null) => ResponseFormat::Unset,
        Some(v) if v == "b64_json" => ResponseFormat::B64Json,
        Some(v) if v == "url" => ResponseFormat::Url,
        Some(other) => {
            return Err(ApiError::invalid_param(
                "response_format",
                format!("`response_format` must be \"b64_json\" or \"url\", not {other}."),
            ))
        }
    };
    Ok(ImageRequest {
        body,
        model,
        prompt,
        n,
        size,
        format,
    })
}

impl ImageRequest {
    /// The size to send to a model taking `sizes`: the one asked for, else the model's
    /// first (its usual), else none (the provider's default).
    pub fn size_for(&self, sizes: &[(u32, u32)]) -> Option<(u32, u32)> {
        self.size.or_else(|| sizes.first().copied())
    }

    /// A string field of the request (`quality`, `style`, `negative_prompt`).
    pub fn text(&self, name: &str) -> Option<&str> {
        self.body.get(name).and_then(Value::as_str)
    }
}

/// One generated image.
#[derive(Debug, Clone, PartialEq)]
pub enum Image {
    /// The image's bytes.
    Bytes(Bytes),
    /// Where the provider keeps it.
    Url(String),
}

/// Images in `b64_json` strings (`data: [{"b64_json": …}]`, or `url` when the provider
/// answered links), as OpenAI-compatible answers hold them.
pub fn openai_data(v: &Value) -> Result<Vec<Image>, String> {
    let data = v["data"]
        .as_array()
        .ok_or("the provider's image answer has no `data` list")?;
    data.iter()
        .map(|d| match (d["b64_json"].as_str(), d["url"].as_str()) {
            (Some(b), _) => unb64(b).map(|b| Image::Bytes(Bytes::from(b))),
            (None, Some(u)) => Ok(Image::Url(u.to_string())),
            _ => Err("an image in `data` has neither `b64_json` nor `url`".to_string()),
        })
        .collect()
}

/// The native request for `count` images of `model_id`, or why this provider cannot serve
/// it (the candidate is skipped).
pub fn request(
    kind: ProviderKind,
    req: &ImageRequest,
    model_id: &str,
    size: Option<(u32, u32)>,
    count: u32,
) -> Result<MediaRequest, String> {
    images_of(kind)?.request(req, model_id, size, count)
}

/// Images one call to `kind` makes when `want` are still needed.
pub fn per_call(kind: ProviderKind, want: u32) -> u32 {
    format(kind)
        .images
        .map_or(1, |i| if i.several_per_call() { want } else { 1 })
}

/// A native answer → its images.
pub fn response(
    kind: ProviderKind,
    upstream_type: &str,
    body: Bytes,
) -> Result<Vec<Image>, String> {
    let images = images_of(kind)?.images(upstream_type, body)?;
    if images.is_empty() {
        return Err("the provider's answer held no image".into());
    }
    Ok(images)
}

fn images_of(kind: ProviderKind) -> Result<&'static dyn super::Images, String> {
    format(kind)
        .images
        .ok_or_else(|| format!("`{}` has no image generation API", kind.as_str()))
}

/// The content type of image bytes, from their signature.
pub fn sniff(bytes: &[u8]) -> &'static str {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        "image/png"
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        "image/jpeg"
    } else if bytes.starts_with(b"RIFF") && bytes.get(8..12) == Some(b"WEBP") {
        "image/webp"
    } else if bytes.starts_with(b"GIF8") {
        "image/gif"
    } else {
        "application/octet-stream"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(v: Value) -> Result<ImageRequest, ApiError> {
        parse(v.to_string().as_bytes())
    }

    #[test]
    fn parses_the_openai_shape_and_refuses_bad_fields_by_name() {
        let r = req(
            json!({"model": "m", "prompt": "a cat", "n": 2, "size": "512x256",
                           "response_format": "url", "quality": "hd"}),
        )
        .unwrap();
        assert_eq!(
            (r.n, r.size, r.format),
            (2, Some((512, 256)), ResponseFormat::Url)
        );
        assert_eq!(r.text("quality"), Some("hd"));
        let d = req(json!({"prompt": "x", "size": "auto"})).unwrap();
        assert_eq!((d.n, d.size, d.format), (1, None, ResponseFormat::Unset));
        assert_eq!(d.size_for(&[(768, 768)]), Some((768, 768)));
        for (bad, param) in [
            (json!({"prompt": ""}), "prompt"),
            (json!({"prompt": "x", "n": 5}), "n"),
            (json!({"prompt": "x", "n": 0}), "n"),
            (json!({"prompt": "x", "size": "big"}), "size"),
            (
                json!({"prompt": "x", "response_format": "png"}),
                "response_format",
            ),
            (json!({"prompt": "x", "model": 3}), "model"),
        ] {
            let e = req(bad.clone()).unwrap_err();
            assert_eq!((e.status, e.param), (400, Some(param)), "{bad}");
        }
    }

    #[test]
    fn openai_data_reads_b64_and_urls() {
        let v = json!({"data": [{"b64_json": "iVBORw=="}, {"url": "https://x/y.png"}]});
        let imgs = openai_data(&v).unwrap();
        assert_eq!(imgs[1], Image::Url("https://x/y.png".into()));
        assert!(matches!(&imgs[0], Image::Bytes(b) if b.starts_with(b"\x89PN")));
        assert!(openai_data(&json!({"data": [{}]})).is_err());
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n...."), "image/png");
        assert_eq!(sniff(&[0xff, 0xd8, 0xff, 0xe0]), "image/jpeg");
    }
}
