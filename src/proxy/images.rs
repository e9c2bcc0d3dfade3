//! `POST /v1/images/generations` and `GET /v1/images/files/{id}`.
//!
//! A generation reads the body once, looks it up in the cache, plans image models (the
//! requested `size` is a capability: a model whose `sizes` lack it is not a candidate), and
//! runs the attempt engine with an [`ImageCall`]. A provider that makes one image per call
//! (Workers AI, Gemini) is run again until `n` images are in hand; each run is the engine's,
//! with its failover, caps, budgets and attempt metrics. Images come back as the client asked:
//! `b64_json`, or `url` — the provider's link when it gave one, else a link to the image kept
//! in the embedded store ([`crate::image_files`]), served without a key (its id is the
//! credential).

use super::attempt::{self, Answer, Call, Failure, Refusal, Reply};
use super::body::read_body;
use super::ctx::RequestCtx;
use super::guard::CacheAsk;
use super::respond::{send, send_error, send_json};
use super::Gateway;
use crate::config::ModelType;
use crate::errors::ApiError;
use crate::image_files::ImageFiles;
use crate::providers::images::{self, Image, ImageRequest, ResponseFormat};
use crate::providers::media::b64;
use crate::providers::Outbound;
use crate::routing::{ModelEntry, Needs};
use crate::state::State;
use bytes::Bytes;
use pingora::proxy::Session;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// The path images kept by the gateway are served under.
pub const FILES_PATH: &str = "/v1/images/files/";

pub async fn generations(gw: &Gateway, state: &State, session: &mut Session, ctx: &mut RequestCtx) {
    let Some(raw) = read_body(gw, session, ctx, state).await else {
        return;
    };
    let prompt = super::guardrails::Prompt::Image;
    let Some(raw) = super::guardrails::prompt(state, session, ctx, raw, prompt).await else {
        return; // blocked
    };
    let req = match images::parse(&raw) {
        Ok(r) => r,
        Err(e) => return send_error(session, ctx, &e).await,
    };
    ctx.requested_model = req.model.clone();
    ctx.prompt_estimate = req.prompt.len().div_ceil(4) as u32;
    let ask = CacheAsk {
        endpoint: "images",
        model: req.model.as_deref(),
        stream: false,
        include_usage: false,
    };
    let Some(mut ticket) =
        super::guard::cache_gate(gw, state, session, ctx, true, &raw, &ask).await
    else {
        return; // answered from the cache
    };
    let needs = Needs {
        model_type: ModelType::Image,
        prompt_tokens: ctx.prompt_estimate,
        max_output_tokens: Some(0),
        image_size: req.size,
        ..Needs::default()
    };
    // One engine run per call; a provider making several images per call needs one run.
    let mut got: Vec<Image> = Vec::with_capacity(req.n as usize);
    let mut cost = 0.0;
    while (got.len() as u32) < req.n {
        let plan = match attempt::plan(state, ctx, req.model.as_deref(), &needs) {
            Ok(p) => p,
            Err(e) => return send_error(session, ctx, &e).await,
        };
        let want = req.n - got.len() as u32;
        ctx.spend.images = want;
        // What earlier runs generated and cost, logged as such if this run fails.
        ctx.images = got.len() as u32;
        ctx.spend.cost = Some(cost);
        let call = ImageCall { req: &req, want };
        let Some(mut more) = attempt::run(gw, state, session, ctx, plan, &needs, &call).await
        else {
            return; // every candidate failed: answered
        };
        // The run's settlement (`spend::settle`) replaced the cost with its own.
        cost += ctx.spend.cost.unwrap_or(0.0);
        more.truncate(want as usize);
        got.append(&mut more);
    }
    ctx.images = got.len() as u32;
    ctx.spend.cost = Some(cost);
    ctx.spend.header = Some(cost);

    let base = public_base(state, session);
    let (data, links) = match render(gw, state, &req, got, &base).await {
        Ok(d) => d,
        Err(e) => return send_error(session, ctx, &e).await,
    };
    let body = Bytes::from(
        json!({"created": crate::time::unix_secs(std::time::SystemTime::now()), "data": data})
            .to_string(),
    );
    if links {
        // A cached answer must not outlive the images it links to (ours expire after the
        // TTL; providers' links, such as OpenAI's, after an hour or so).
        ticket.cap_ttl(Duration::from_secs(state.config.images.url_ttl_seconds));
    }
    ticket.store(&gw.cache, ctx, body.clone()).await;
    send_json(session, ctx, 200, body).await
}

/// The answer's `data`, in the format asked for; whether it holds links.
async fn render(
    gw: &Gateway,
    state: &State,
    req: &ImageRequest,
    got: Vec<Image>,
    base: &str,
) -> Result<(Vec<Value>, bool), ApiError> {
    let mut data = Vec::with_capacity(got.len());
    let mut links = false;
    for image in got {
        links |= matches!(image, Image::Url(_)) || req.format == ResponseFormat::Url;
        data.push(match (image, req.format) {
            (Image::Url(url), _) => json!({ "url": url }),
            (Image::Bytes(bytes), ResponseFormat::Url) => {
                let id = keep(&gw.images, state, bytes).await?;
                json!({ "url": format!("{base}{FILES_PATH}{id}") })
            }
            (Image::Bytes(bytes), _) => json!({ "b64_json": b64(&bytes) }),
        });
    }
    Ok((data, links))
}

/// Keeps an image in the store for `[images] url_ttl_seconds`: its id.
async fn keep(files: &Arc<ImageFiles>, state: &State, bytes: Bytes) -> Result<String, ApiError> {
    let cfg = &state.config.images;
    let (ttl_ms, max) = (cfg.url_ttl_seconds.saturating_mul(1000), cfg.max_bytes);
    let files = files.clone();
    let stored = tokio::task::spawn_blocking(move || {
        let ctype = images::sniff(&bytes);
        files.put(ctype, &bytes, crate::cache::now_ms(), ttl_ms, max)
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    stored.map_err(|e| {
        log::error!("cannot keep a generated image: {e}");
        ApiError::internal(format!(
            "The image was generated but could not be kept for a URL ({e}). Ask for \
             `response_format: \"b64_json\"` instead."
        ))
    })
}

/// Where clients reach the gateway: `[images] public_base_url`, else `http://` and the
/// request's `Host`.
fn public_base(state: &State, session: &Session) -> String {
    let configured = state.config.images.public_base_url.trim_end_matches('/');
    if !configured.is_empty() {
        return configured.to_string();
    }
    let req = session.req_header();
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .or_else(|| state.config.server.listen.first().map(String::as_str))
        .unwrap_or("localhost");
    format!("http://{host}")
}

/// `GET /v1/images/files/{id}`: a kept image, 404 once expired. No key: the id is the
/// credential (128 random bits), so the link works in an `<img>` tag.
pub async fn file(gw: &Gateway, session: &mut Session, ctx: &mut RequestCtx) {
    let path = session.req_header().uri.path().to_string();
    let id = path.strip_prefix(FILES_PATH).unwrap_or("").to_string();
    let files = gw.images.clone();
    let now = crate::cache::now_ms();
    let found = tokio::task::spawn_blocking(move || files.get(&id, now))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
    match found {
        Ok(Some(f)) => {
            let left = f.expires_ms.saturating_sub(now) / 1000;
            let headers = [
                ("cache-control", format!("private, max-age={left}")),
                ("x-content-type-options", "nosniff".to_string()),
            ];
            send(
                session,
                ctx,
                200,
                &f.content_type,
                Bytes::from(f.body),
                &headers,
            )
            .await
        }
        Ok(None) => {
            let mut e = ApiError::not_found(&path);
            e.message =
                "No such image: it expired ([images] url_ttl_seconds) or never existed.".into();
            send_error(session, ctx, &e).await
        }
        Err(e) => {
            log::error!("image store: {e}");
            send_error(
                session,
                ctx,
                &ApiError::internal("The image store cannot be read."),
            )
            .await
        }
    }
}

/// Image generation on one model: `want` images still needed.
struct ImageCall<'a> {
    req: &'a ImageRequest,
    want: u32,
}

impl Call for ImageCall<'_> {
    type Out = Vec<Image>;

    fn build(&self, model: &ModelEntry) -> Result<Outbound, Refusal> {
        let count = images::per_call(model.provider_kind, self.want);
        let size = self.req.size_for(&model.sizes);
        let req = images::request(model.provider_kind, self.req, &model.id, size, count)
            .map_err(Refusal::Skip)?;
        Outbound::media(req).map_err(Refusal::Final)
    }

    async fn answer(
        &self,
        reply: Reply<'_>,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<(Vec<Image>, Answer), Failure> {
        let kind = reply.model.provider_kind;
        let (ctype, body, answered) = reply.read_all(ctx).await?;
        let images = images::response(kind, &ctype, body).map_err(Failure::Malformed)?;
        // What the attempt is charged for (`cost.per_image`).
        ctx.spend.images = images.len().min(self.want as usize) as u32;
        Ok((images, answered))
    }
}
