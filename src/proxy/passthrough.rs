//! Native passthrough: `ANY /providers/{name}/{rest}` goes to that provider's base URL with
//! its stored key, through Pingora's stock proxy phases, which stream any body size both
//! ways untouched. The path is appended to the configured base URL, so a client can never
//! steer the request to another host; the client's own credentials and the gateway's
//! control headers are removed before it leaves.

use super::ctx::RequestCtx;
use crate::errors::ApiError;
use crate::live::slots::Slot;
use crate::providers::Upstream;
use crate::state::State;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use std::sync::Arc;

/// Where a passthrough request goes.
pub struct Target {
    pub upstream: Arc<Upstream>,
    pub peer: Arc<HttpPeer>,
    /// The upstream path and query.
    pub path_and_query: String,
    /// Counts the request against the provider's `max_connections` until it ends.
    pub _slot: Slot,
    /// The endpoint of a pooled provider (`0` for a single `base_url`).
    pub endpoint: usize,
    /// Counts the request in flight at that endpoint until it ends.
    pub _lease: Option<crate::live::endpoints::Lease>,
}

/// Splits `/providers/{name}/{rest}` into the provider and the rest (with its leading `/`).
pub fn split(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/providers/")?;
    match rest.find('/') {
        Some(i) => Some((&rest[..i], &rest[i..])),
        None => Some((rest, "/")),
    }
}

/// Resolves the target of a passthrough request.
pub async fn target(state: &State, path: &str, query: Option<&str>) -> Result<Target, ApiError> {
    let (name, rest) = split(path).ok_or_else(|| ApiError::not_found(path))?;
    let idx = state
        .upstreams
        .iter()
        .position(|u| u.name == name)
        .ok_or_else(|| {
            let mut e = ApiError::not_found(path);
            e.message = format!("No provider named `{name}` is configured.");
            e
        })?;
    let upstream = state.upstreams[idx].clone();
    if let Some(why) = upstream
        .unavailable
        .clone()
        .or_else(|| state.providers[idx].blocked())
    {
        return Err(ApiError::no_capacity(format!(
            "Provider `{name}` cannot be used: {why}."
        )));
    }
    // `..` segments, in any spelling, could climb out of the base path on the provider's side.
    check_path(rest)?;
    let Some(slot) = state.slots[idx].try_acquire() else {
        let mut e = ApiError::no_capacity(format!(
            "Provider `{name}` is at its connection limit ({} requests in flight, \
             [[providers]].max_connections). Retry shortly.",
            state.slots[idx].max()
        ));
        e.retry_after = Some(1);
        return Err(e);
    };
    // A pooled provider: the endpoint a model request would get now.
    let lease = match &state.pools[idx] {
        Some(pool) => Some(pool.lease(0).ok_or_else(|| {
            ApiError::no_capacity(format!(
                "Provider `{name}` cannot be used: every endpoint is unhealthy."
            ))
        })?),
        None => None,
    };
    let endpoint = lease.as_ref().map_or(0, |l| l.index);
    let peer = upstream
        .peer(endpoint)
        .await
        .map_err(|e| ApiError::upstream(502, format!("Provider `{name}`: {e}")))?;
    let base = upstream
        .endpoint(endpoint)
        .url
        .as_ref()
        .map_or("", |u| u.path.as_str());
    let mut path_and_query = join_path(base, rest);
    if let Some(q) = query {
        path_and_query.push('?');
        path_and_query.push_str(q);
    }
    Ok(Target {
        upstream,
        peer,
        path_and_query,
        _slot: slot,
        endpoint,
        _lease: lease,
    })
}

/// The upstream path for a client path `rest` under the provider's base path. A client
/// whose SDK adds the API's version itself (the Anthropic SDK sends `/v1/messages`, Google's
/// `/v1beta/models/…`) names segments the base URL already ends with: the overlap that
/// ends in a version segment appears once (`/v1` + `/v1/messages` → `/v1/messages`).
pub fn join_path(base: &str, rest: &str) -> String {
    let base = base.trim_end_matches('/');
    let b: Vec<&str> = base.split('/').filter(|s| !s.is_empty()).collect();
    let r: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let overlap = (1..=b.len().min(r.len()))
        .rev()
        .find(|&n| b[b.len() - n..] == r[..n] && is_version(b[b.len() - 1]));
    match overlap {
        Some(n) => {
            let kept = &b[..b.len() - n];
            let mut out = String::with_capacity(base.len() + rest.len());
            for seg in kept {
                out.push('/');
                out.push_str(seg);
            }
            out.push_str(rest);
            out
        }
        None => format!("{base}{rest}"),
    }
}

/// `v1`, `v2`, `v1beta`, `v1alpha`, `v1beta1`…
fn is_version(seg: &str) -> bool {
    let Some(rest) = seg.strip_prefix('v') else {
        return false;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return false;
    }
    let tail = &rest[digits..];
    ["", "alpha", "beta"].iter().any(|t| {
        tail.strip_prefix(t)
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
    }) && (tail.is_empty() || tail.starts_with('a') || tail.starts_with('b'))
}

/// Whether `method` is one a provider API uses (others, like `TRACE`, are refused).
pub fn method_allowed(method: &http::Method) -> bool {
    use http::Method;
    [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
    ]
    .contains(method)
}

/// Refuses a passthrough path that could leave the provider's base path however a server
/// decodes it: `.` or `..` segments literal or percent-encoded (`%2e%2e`, `..%2f`), with
/// path parameters (`..;x`), backslashes, or encodings that decode to another encoding.
pub fn check_path(rest: &str) -> Result<(), ApiError> {
    let refuse = |why: &str| {
        Err(ApiError::invalid(format!(
            "Passthrough paths may not contain {why}."
        )))
    };
    let decoded = match percent_decode(rest) {
        Some(d) => d,
        None => return refuse("malformed percent-encoding"),
    };
    if decoded.contains(&b'\\') {
        return refuse("backslashes");
    }
    if decoded.contains(&b'%') {
        return refuse("percent-encoded `%` (double encoding)");
    }
    if decoded.contains(&0) {
        return refuse("NUL bytes");
    }
    let dot_segment = decoded.split(|&b| b == b'/').any(|seg| {
        // A `;` starts path parameters some servers strip: `..;x` is `..` to them.
        let seg = seg.split(|&b| b == b';').next().unwrap_or(seg);
        seg == b"." || seg == b".."
    });
    if dot_segment {
        return refuse("`.` or `..` segments");
    }
    Ok(())
}

/// `%XX` sequences decoded; `None` when one is malformed.
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Headers never forwarded to a provider: the client's credentials (in every spelling
/// providers read), hop-by-hop headers, what could steer the provider's idea of the host,
/// and the gateway's own controls.
const STRIPPED: &[&str] = &[
    "authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "x-forwarded-host",
    "forwarded",
    "proxy-authorization",
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "cookie",
];

/// Rewrites the upstream request head: path, host, credentials, and (`[telemetry]`) the
/// attempt's `traceparent`.
pub fn rewrite(req: &mut RequestHeader, ctx: &mut RequestCtx) -> pingora::Result<()> {
    let Some(t) = &ctx.passthrough else {
        return Ok(());
    };
    let url = t
        .upstream
        .endpoints
        .get(t.endpoint)
        .and_then(|e| e.url.as_ref());
    let provider = &t.upstream.name;
    crate::telemetry::passthrough_begin(&mut ctx.trace, req, ctx.start, provider, url);
    let uri = t.path_and_query.parse::<http::Uri>().map_err(|e| {
        pingora::Error::because(pingora::ErrorType::InvalidHTTPHeader, "passthrough path", e)
    })?;
    req.set_uri(uri);
    for name in STRIPPED {
        req.remove_header(*name);
    }
    let controls: Vec<http::HeaderName> = req
        .headers
        .keys()
        .filter(|k| k.as_str().starts_with("x-gateway-") || k.as_str().starts_with("cf-aig-"))
        .cloned()
        .collect();
    for name in controls {
        req.remove_header(&name);
    }
    let host = t.upstream.endpoint(t.endpoint).host_header.clone();
    req.insert_header(http::header::HOST, host)?;
    // A key of the pool (with every key out, the first: the provider answers for itself).
    let key = t.upstream.pick_key().unwrap_or(Some(0));
    if let Some(k) = key.and_then(|k| t.upstream.keys.get(k)) {
        req.insert_header(k.header.0.clone(), k.header.1.clone())?;
    }
    for (k, v) in &t.upstream.extra_headers {
        req.insert_header(k.clone(), v.clone())?;
    }
    Ok(())
}

/// The most of a passthrough error body held for scrubbing; past it the rest passes as is
/// (an error body that large is not an error message).
const MAX_HELD_ERROR_BODY: usize = 256 * 1024;

/// Holds a passthrough error answer's body until its end, then lets it out scrubbed of
/// every configured secret (a provider may echo the key it received).
pub fn hold_error_body(
    held: &mut bytes::BytesMut,
    body: &mut Option<bytes::Bytes>,
    end: bool,
    secrets: &crate::secrets::Secrets,
) {
    if let Some(chunk) = body.take() {
        held.extend_from_slice(&chunk);
    }
    if end || held.len() > MAX_HELD_ERROR_BODY {
        let all = std::mem::take(held);
        if !all.is_empty() {
            *body = Some(bytes::Bytes::from(secrets.scrub_bytes(&all)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_provider_and_rest() {
        assert_eq!(
            split("/providers/groq/chat/completions"),
            Some(("groq", "/chat/completions"))
        );
        assert_eq!(split("/providers/groq"), Some(("groq", "/")));
        assert_eq!(split("/v1/models"), None);
    }

    #[test]
    fn a_version_in_both_the_base_and_the_client_path_appears_once() {
        assert_eq!(join_path("/v1", "/v1/messages"), "/v1/messages");
        assert_eq!(
            join_path("/anthropic/v1", "/v1/messages"),
            "/anthropic/v1/messages"
        );
        assert_eq!(
            join_path("/openai/v1", "/openai/v1/chat/completions"),
            "/openai/v1/chat/completions"
        );
        assert_eq!(
            join_path("/v1beta", "/v1beta/models/g:generateContent"),
            "/v1beta/models/g:generateContent"
        );
        assert_eq!(
            join_path("/openai/v1", "/chat/completions"),
            "/openai/v1/chat/completions"
        );
        assert_eq!(join_path("", "/v1/models"), "/v1/models");
        assert_eq!(join_path("/v1/", "/v1/x"), "/v1/x");
        // No version at the seam: a plain join.
        assert_eq!(join_path("/api", "/api/x"), "/api/api/x");
        assert_eq!(join_path("/v1", "/v2/x"), "/v1/v2/x");
        assert!(is_version("v1") && is_version("v1beta") && is_version("v2alpha1"));
        assert!(!is_version("v") && !is_version("video") && !is_version("vx1"));
    }

    #[test]
    fn dot_segments_are_refused_in_every_spelling() {
        for bad in [
            "/../x",
            "/a/./b",
            "/%2e%2e/x",
            "/%2E%2e/x",
            "/..%2fx",
            "/a/..%2F..%2Fb",
            "/..;/x",
            "/a/..;jsessionid=1/b",
            "/a\\..\\b",
            "/a%5c..%5cb",
            "/%252e%252e/x",
            "/%zz",
            "/%2",
            "/a%00b",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
        for good in [
            "/v1/messages",
            "/v1beta/models/gemini-2.5-flash:generateContent",
            "/a..b/c",
            "/.well-known",
            "/a%20b",
        ] {
            assert!(check_path(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn an_error_body_is_held_to_its_end_and_scrubbed() {
        let secrets = crate::secrets::Secrets::new(["sk-live-0123456789abcdef".to_string()]);
        let mut held = bytes::BytesMut::new();
        let mut out = Vec::new();
        for (chunk, end) in [
            (&b"{\"error\": \"bad key sk-live-0123"[..], false),
            (&b"456789abcdef\"}"[..], true),
        ] {
            let mut body = Some(bytes::Bytes::copy_from_slice(chunk));
            hold_error_body(&mut held, &mut body, end, &secrets);
            out.extend(body.into_iter().flatten());
        }
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, "{\"error\": \"bad key [REDACTED]\"}");
    }

    #[test]
    fn only_provider_api_methods_pass() {
        assert!(method_allowed(&http::Method::POST));
        assert!(method_allowed(&http::Method::GET));
        assert!(!method_allowed(&http::Method::TRACE));
        assert!(!method_allowed(&http::Method::CONNECT));
        assert!(!method_allowed(
            &http::Method::from_bytes(b"PROPFIND").unwrap()
        ));
    }
}
