//! Images from Gemini's image-output models (`gemini-2.5-flash-image`, …):
//! `POST /models/{model}:generateContent` with `generationConfig.responseModalities`
//! `["TEXT","IMAGE"]` and, for a size that is not square, `imageConfig.aspectRatio`; the
//! answer's parts carry the image as `inlineData` `{mimeType, data}` (base64). One image per
//! call.

use crate::providers::audio::json_answer;
use crate::providers::embeddings::to_vec;
use crate::providers::images::{Image, ImageRequest};
use crate::providers::media::{unb64, MediaRequest};
use crate::providers::Images;
use bytes::Bytes;
use serde_json::{json, Value};

pub struct GeminiImages;

/// The aspect ratios Gemini's image models take.
const ASPECT_RATIOS: [&str; 10] = [
    "1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9",
];

/// The aspect ratio Gemini has for `w`x`h`: within 3 % of it, as Gemini's own pixel sizes
/// are (`1344x768` is its 16:9).
fn aspect_ratio((w, h): (u32, u32)) -> Option<&'static str> {
    let want = f64::from(w) / f64::from(h.max(1));
    ASPECT_RATIOS
        .iter()
        .copied()
        .map(|r| {
            let (a, b) = r.split_once(':').unwrap_or(("1", "1"));
            let ratio = a.parse::<f64>().unwrap_or(1.0) / b.parse::<f64>().unwrap_or(1.0);
            (r, (want / ratio - 1.0).abs())
        })
        .filter(|(_, off)| *off < 0.03)
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(r, _)| r)
}

impl Images for GeminiImages {
    fn request(
        &self,
        req: &ImageRequest,
        model_id: &str,
        size: Option<(u32, u32)>,
        _count: u32,
    ) -> Result<MediaRequest, String> {
        let mut config = json!({"responseModalities": ["TEXT", "IMAGE"]});
        if let Some((w, h)) = size {
            let ratio = aspect_ratio((w, h)).ok_or_else(|| {
                format!(
                    "`{model_id}` makes images in the aspect ratios {}; {w}x{h} is none of them",
                    ASPECT_RATIOS.join(", ")
                )
            })?;
            // Square is the default, and the only shape older image models know.
            if ratio != "1:1" {
                config["imageConfig"] = json!({ "aspectRatio": ratio });
            }
        }
        let body = json!({
            "contents": [{"role": "user", "parts": [{"text": req.prompt}]}],
            "generationConfig": config,
        });
        Ok(MediaRequest::json(
            format!("/models/{model_id}:generateContent"),
            to_vec(&body),
        ))
    }

    fn images(&self, _upstream_type: &str, body: Bytes) -> Result<Vec<Image>, String> {
        let v = json_answer(&body, "Gemini")?;
        if let Some(reason) = v["promptFeedback"]["blockReason"].as_str() {
            return Err(format!("Gemini blocked the prompt ({reason})"));
        }
        let parts = v["candidates"][0]["content"]["parts"]
            .as_array()
            .ok_or("the Gemini answer has no `candidates[0].content.parts`")?;
        parts
            .iter()
            .filter_map(|p| p.get("inlineData").or_else(|| p.get("inline_data")))
            .filter(|d| mime_of(d).is_some_and(|m| m.starts_with("image/")))
            .map(|d| {
                let data = d["data"].as_str().ok_or("an inline image has no `data`")?;
                Ok(Image::Bytes(Bytes::from(unb64(data)?)))
            })
            .collect()
    }
}

fn mime_of(inline: &Value) -> Option<&str> {
    inline
        .get("mimeType")
        .or_else(|| inline.get("mime_type"))?
        .as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::images::parse;

    #[test]
    fn sizes_become_aspect_ratios_and_inline_data_images() {
        let r = parse(br#"{"prompt":"a lighthouse","size":"1344x768"}"#).unwrap();
        let m = GeminiImages
            .request(&r, "gemini-2.5-flash-image", r.size, 1)
            .unwrap();
        assert_eq!(m.path, "/models/gemini-2.5-flash-image:generateContent");
        let v: Value = serde_json::from_slice(&m.concat()).unwrap();
        assert_eq!(v["generationConfig"]["imageConfig"]["aspectRatio"], "16:9");
        assert_eq!(v["contents"][0]["parts"][0]["text"], "a lighthouse");
        let sq = GeminiImages
            .request(&r, "g", Some((1024, 1024)), 1)
            .unwrap();
        let v: Value = serde_json::from_slice(&sq.concat()).unwrap();
        assert_eq!(
            v["generationConfig"],
            json!({"responseModalities": ["TEXT", "IMAGE"]})
        );
        assert!(GeminiImages.request(&r, "g", Some((1000, 300)), 1).is_err());
        for (size, ratio) in [
            ((1184, 864), "4:3"),
            ((768, 1344), "9:16"),
            ((832, 1248), "2:3"),
        ] {
            assert_eq!(aspect_ratio(size), Some(ratio), "{size:?}");
        }

        let answer = json!({"candidates": [{"content": {"role": "model", "parts": [
            {"text": "Here is your lighthouse."},
            {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}
        ]}, "finishReason": "STOP"}]});
        let got = GeminiImages
            .images("application/json", Bytes::from(answer.to_string()))
            .unwrap();
        assert_eq!(got.len(), 1);
        assert!(matches!(&got[0], Image::Bytes(b) if b.starts_with(b"\x89PNG")));
        let blocked = json!({"promptFeedback": {"blockReason": "SAFETY"}});
        assert!(GeminiImages
            .images("application/json", Bytes::from(blocked.to_string()))
            .unwrap_err()
            .contains("SAFETY"));
    }
}
