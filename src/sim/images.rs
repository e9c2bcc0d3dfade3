//! Simulated image generation, in each provider's wire format:
//! - OpenAI `…/images/generations`: `n` images at `size`, as `b64_json`, or (DALL·E models
//!   asked for `url`) as links the simulator serves at `/_sim/images/{w}x{h}/{seed}.png`.
//! - Workers AI FLUX (`/run/…flux…`): `{"result":{"image":"<base64>"},"success":true,…}`.
//! - Workers AI Stable Diffusion (`/run/…stable-diffusion…`): the PNG's bytes, `image/png`,
//!   at `width` × `height`.
//! - Gemini image models (`…/models/{m}:generateContent`, `m` naming an image model): the
//!   image as `inlineData` in the candidate's parts; refused (400) unless
//!   `generationConfig.responseModalities` includes `IMAGE`, as Gemini does.
//!
//! Images are real PNGs ([`super::png`]) tinted by the prompt. Behaviours (`fail-500`, …)
//! apply as for the other media.

use super::media::{misbehave, openai_failure};
use super::native::{error_body, Format};
use super::{png, write, write_json, SimProvider};
use crate::providers::media::b64;
use bytes::Bytes;
use pingora::proxy::Session;
use pingora::Result;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// An image request the simulator answers, by path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    OpenAi,
    WorkersFlux,
    WorkersSd,
    Gemini,
}

impl Kind {
    pub fn of_path(path: &str) -> Option<Kind> {
        if path.ends_with("/images/generations") {
            return Some(Kind::OpenAi);
        }
        if let Some((_, model)) = path.split_once("/run/") {
            let model = model.to_ascii_lowercase();
            if model.contains("flux") {
                return Some(Kind::WorkersFlux);
            }
            if model.contains("stable-diffusion") {
                return Some(Kind::WorkersSd);
            }
            return None;
        }
        let (_, model) = path.rsplit_once("/models/")?;
        let (model, method) = model.split_once(':')?;
        (method == "generateContent" && model.contains("image")).then_some(Kind::Gemini)
    }
}

/// The path the simulator serves its image links under.
pub const LINKS: &str = "/_sim/images/";

/// The PNG for a prompt at a size.
fn image(prompt: &str, (w, h): (u32, u32)) -> Vec<u8> {
    png::gradient(w, h, &Sha256::digest(prompt.as_bytes()))
}

/// Gemini's pixel sizes for its aspect ratios.
fn gemini_size(ratio: &str) -> (u32, u32) {
    match ratio {
        "2:3" => (832, 1248),
        "3:2" => (1248, 832),
        "3:4" => (864, 1184),
        "4:3" => (1184, 864),
        "4:5" => (896, 1152),
        "5:4" => (1152, 896),
        "9:16" => (768, 1344),
        "16:9" => (1344, 768),
        "21:9" => (1536, 672),
        _ => (1024, 1024),
    }
}

/// `/_sim/images/{w}x{h}/{seed}.png` → the PNG it names.
pub fn linked(path: &str) -> Option<Vec<u8>> {
    let rest = path.strip_prefix(LINKS)?;
    let (size, seed) = rest.split_once('/')?;
    let size = crate::config::parse_size(size).filter(|(w, h)| *w <= 2048 && *h <= 2048)?;
    Some(image(seed.strip_suffix(".png")?, size))
}

impl SimProvider {
    /// Answers an image request of `kind`.
    pub(super) async fn images(&self, session: &mut Session, kind: Kind) -> Result<()> {
        let mut body = Vec::new();
        while let Some(c) = session.read_request_body().await? {
            body.extend_from_slice(&c);
        }
        let body = Bytes::from(body);
        let path = session.req_header().uri.path().to_string();
        let native = match kind {
            Kind::OpenAi => None,
            Kind::Gemini => Some(Format::Gemini),
            Kind::WorkersFlux | Kind::WorkersSd => Some(Format::WorkersAi),
        };
        let fail = |status: u16, msg: &str| match native {
            Some(f) => error_body(f, status, msg),
            None => crate::errors::envelope("invalid_request_error", None, None, msg),
        };
        let req: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                self.record(session, &body, "");
                let msg = format!("sim: bad JSON: {e}");
                return write(session, 400, "application/json", fail(400, &msg), &[]).await;
            }
        };
        let model = match kind {
            Kind::OpenAi => req["model"].as_str().unwrap_or("").to_string(),
            Kind::WorkersFlux | Kind::WorkersSd => {
                path.split_once("/run/").map_or("", |m| m.1).to_string()
            }
            Kind::Gemini => path
                .rsplit_once("/models/")
                .and_then(|(_, m)| m.split(':').next())
                .unwrap_or("")
                .to_string(),
        };
        let mut extra = serde_json::Map::new();
        extra.insert("json".into(), req.clone());
        self.record_with(session, &body, &model, extra);

        let behavior = self.media_behavior(session, &model);
        if let Some(done) = misbehave(session, behavior, |status, msg| match native {
            Some(f) => error_body(f, status, msg),
            None => openai_failure(status, msg),
        })
        .await
        {
            return done;
        }

        match kind {
            Kind::OpenAi => {
                let prompt = req["prompt"].as_str().unwrap_or("");
                let size = match req["size"].as_str() {
                    None | Some("auto") => (1024, 1024),
                    Some(s) => match crate::config::parse_size(s) {
                        Some(size) => size,
                        None => {
                            let msg = format!("Invalid value: '{s}'. Supported values are: '256x256', '512x512', '1024x1024', '1792x1024' and '1024x1792'.");
                            return write(session, 400, "application/json", fail(400, &msg), &[])
                                .await;
                        }
                    },
                };
                let n = req["n"].as_u64().unwrap_or(1).clamp(1, 10);
                // DALL·E links when asked; GPT image models always answer base64.
                let links = req["response_format"] == "url" && !model.starts_with("gpt-image");
                let host = session
                    .req_header()
                    .headers
                    .get("host")
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("localhost")
                    .to_string();
                let data: Vec<Value> = (0..n)
                    .map(|i| {
                        let seed = format!("{prompt}#{i}");
                        if links {
                            let seed = hex::encode(&Sha256::digest(seed.as_bytes())[..8]);
                            json!({"url": format!("http://{host}{LINKS}{}x{}/{seed}.png", size.0, size.1)})
                        } else {
                            json!({"b64_json": b64(&image(&seed, size)), "revised_prompt": prompt})
                        }
                    })
                    .collect();
                let v = json!({"created": super::now(), "data": data});
                write_json(session, 200, &v).await
            }
            Kind::WorkersFlux => {
                let prompt = req["prompt"].as_str().unwrap_or("");
                if req["steps"].as_u64().is_some_and(|s| s > 8) {
                    let msg = "AiError: Bad input: must be <= 8 (steps)";
                    return write(session, 400, "application/json", fail(400, msg), &[]).await;
                }
                let v = json!({"result": {"image": b64(&image(prompt, (1024, 1024)))},
                               "success": true, "errors": [], "messages": []});
                write_json(session, 200, &v).await
            }
            Kind::WorkersSd => {
                let prompt = req["prompt"].as_str().unwrap_or("");
                let side = |k: &str| req[k].as_u64().unwrap_or(1024) as u32;
                let (w, h) = (side("width"), side("height"));
                if !(256..=2048).contains(&w) || !(256..=2048).contains(&h) {
                    let msg = "AiError: Bad input: width and height must be from 256 to 2048";
                    return write(session, 400, "application/json", fail(400, msg), &[]).await;
                }
                let png = image(prompt, (w, h));
                write(session, 200, "image/png", Bytes::from(png), &[]).await
            }
            Kind::Gemini => {
                let config = &req["generationConfig"];
                let modalities = config["responseModalities"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if !modalities.iter().any(|m| m == "IMAGE") {
                    let msg = "Model does not support the requested response modalities: text";
                    return write(session, 400, "application/json", fail(400, msg), &[]).await;
                }
                let prompt: String = req["contents"]
                    .as_array()
                    .and_then(|c| c.last())
                    .and_then(|c| c["parts"].as_array())
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["text"].as_str())
                    .collect();
                let ratio = config["imageConfig"]["aspectRatio"]
                    .as_str()
                    .unwrap_or("1:1");
                let png = image(&prompt, gemini_size(ratio));
                let v = json!({
                    "candidates": [{"content": {"role": "model", "parts": [
                        {"text": format!("Here is an image of {prompt}.")},
                        {"inlineData": {"mimeType": "image/png", "data": b64(&png)}}
                    ]}, "finishReason": "STOP", "index": 0}],
                    "usageMetadata": {"promptTokenCount": prompt.len() / 4 + 1,
                                      "candidatesTokenCount": 1290,
                                      "totalTokenCount": prompt.len() / 4 + 1291},
                    "modelVersion": model,
                });
                write_json(session, 200, &v).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_paths_by_format() {
        assert_eq!(
            Kind::of_path("/oa/v1/images/generations"),
            Some(Kind::OpenAi)
        );
        assert_eq!(
            Kind::of_path("/cf/ai/run/@cf/black-forest-labs/flux-1-schnell"),
            Some(Kind::WorkersFlux)
        );
        assert_eq!(
            Kind::of_path("/cf/ai/run/@cf/bytedance/stable-diffusion-xl-lightning"),
            Some(Kind::WorkersSd)
        );
        assert_eq!(Kind::of_path("/cf/ai/run/@cf/baai/bge-m3"), None);
        assert_eq!(
            Kind::of_path("/g/v1beta/models/gemini-2.5-flash-image:generateContent"),
            Some(Kind::Gemini)
        );
        assert_eq!(
            Kind::of_path("/g/v1beta/models/gemini-2.5-flash:generateContent"),
            None
        );
        let png = linked("/_sim/images/16x8/abc.png").unwrap();
        assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 16);
        assert!(linked("/_sim/images/99999x8/abc.png").is_none());
    }
}
