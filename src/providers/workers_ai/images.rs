//! Images on Workers AI (`POST /run/{model}`), one image per call:
//! - FLUX.1 [schnell] (`@cf/black-forest-labs/flux-1-schnell`): `{"prompt","steps"}` →
//!   `{"result":{"image":"<base64>"},"success":true,…}`; no size input (1024x1024).
//! - Stable Diffusion XL (`@cf/stabilityai/stable-diffusion-xl-base-1.0`,
//!   `@cf/bytedance/stable-diffusion-xl-lightning`, …): `{"prompt","negative_prompt",
//!   "width","height","num_steps"}` → the PNG's bytes (`image/png`).

use crate::providers::audio::json_answer;
use crate::providers::embeddings::to_vec;
use crate::providers::images::{Image, ImageRequest};
use crate::providers::media::{unb64, MediaRequest};
use crate::providers::Images;
use bytes::Bytes;
use serde_json::json;

pub struct WorkersAiImages;

/// FLUX models answer base64 JSON and take `steps` (at most 8 on schnell).
fn is_flux(model_id: &str) -> bool {
    model_id.contains("flux")
}

/// The step count the `quality` asks for, within what the model allows.
fn steps(req: &ImageRequest, max: u32) -> u32 {
    match req.text("quality") {
        Some("hd" | "high") => max,
        Some("low") => max / 4,
        _ => max / 2,
    }
    .max(1)
}

impl Images for WorkersAiImages {
    fn request(
        &self,
        req: &ImageRequest,
        model_id: &str,
        size: Option<(u32, u32)>,
        _count: u32,
    ) -> Result<MediaRequest, String> {
        let path = format!("/run/{model_id}");
        if is_flux(model_id) {
            if size.is_some_and(|s| s != (1024, 1024)) {
                return Err(format!("`{model_id}` makes 1024x1024 images only"));
            }
            let body = json!({"prompt": req.prompt, "steps": steps(req, 8)});
            return Ok(MediaRequest::json(path, to_vec(&body)));
        }
        let mut body = json!({"prompt": req.prompt, "num_steps": steps(req, 20)});
        if let Some((w, h)) = size {
            if !(256..=2048).contains(&w) || !(256..=2048).contains(&h) {
                return Err(format!(
                    "`{model_id}` makes images from 256 to 2048 pixels a side, not {w}x{h}"
                ));
            }
            body["width"] = json!(w);
            body["height"] = json!(h);
        }
        if let Some(neg) = req.text("negative_prompt") {
            body["negative_prompt"] = json!(neg);
        }
        Ok(MediaRequest::json(path, to_vec(&body)))
    }

    fn images(&self, upstream_type: &str, body: Bytes) -> Result<Vec<Image>, String> {
        if !upstream_type.starts_with("application/json") {
            return Ok(vec![Image::Bytes(body)]);
        }
        let v = json_answer(&body, "Workers AI")?;
        let b64 = v["result"]["image"]
            .as_str()
            .ok_or("the Workers AI answer has no `result.image`")?;
        Ok(vec![Image::Bytes(Bytes::from(unb64(b64)?))])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::images::parse;
    use serde_json::Value;

    #[test]
    fn flux_and_sdxl_requests_and_answers() {
        let r = parse(
            br#"{"prompt":"a red fox","size":"768x512","quality":"hd","negative_prompt":"blur"}"#,
        )
        .unwrap();
        let flux = "@cf/black-forest-labs/flux-1-schnell";
        assert!(WorkersAiImages.request(&r, flux, r.size, 1).is_err());
        let f = WorkersAiImages
            .request(&r, flux, Some((1024, 1024)), 1)
            .unwrap();
        assert_eq!(f.path, format!("/run/{flux}"));
        let v: Value = serde_json::from_slice(&f.concat()).unwrap();
        assert_eq!(v, json!({"prompt": "a red fox", "steps": 8}));
        let sdxl = "@cf/stabilityai/stable-diffusion-xl-base-1.0";
        let s = WorkersAiImages.request(&r, sdxl, r.size, 1).unwrap();
        let v: Value = serde_json::from_slice(&s.concat()).unwrap();
        assert_eq!(
            v,
            json!({"prompt": "a red fox", "num_steps": 20, "width": 768, "height": 512,
                   "negative_prompt": "blur"})
        );
        assert!(WorkersAiImages
            .request(&r, sdxl, Some((4096, 512)), 1)
            .is_err());

        let png = Bytes::from_static(b"\x89PNG\r\n\x1a\nrest");
        assert_eq!(
            WorkersAiImages.images("image/png", png.clone()).unwrap(),
            vec![Image::Bytes(png)]
        );
        let j = br#"{"result":{"image":"iVBORw0KGgo="},"success":true,"errors":[],"messages":[]}"#;
        let got = WorkersAiImages
            .images("application/json", Bytes::from_static(j))
            .unwrap();
        assert!(matches!(&got[0], Image::Bytes(b) if b.starts_with(b"\x89PNG")));
        assert!(WorkersAiImages
            .images("application/json", Bytes::from_static(b"{\"result\":{}}"))
            .is_err());
    }
}
