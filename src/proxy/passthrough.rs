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
    // `..` segments could climb out of the base path on the provider's side.
    if rest.split('/').any(|seg| seg == ".." || seg == ".") {
        return Err(ApiError::invalid(
            "Passthrough paths may not contain `.` or `..` segments.",
        ));
    }
    let Some(slot) = state.slots[idx].try_acquire() else {
        let mut e = ApiError::no_capacity(format!(
            "Provider `{name}` is at its connection limit ({} requests in flight, \
             [[providers]].max_connections). Retry shortly.",
            state.slots[idx].max()
        ));
        e.retry_after = Some(1);
        return Err(e);
    };
    let peer = upstream
        .peer()
        .await
        .map_err(|e| ApiError::upstream(502, format!("Provider `{name}`: {e}")))?;
    let mut path_and_query = upstream.path(rest);
    if let Some(q) = query {
        path_and_query.push('?');
        path_and_query.push_str(q);
    }
    Ok(Target {
        upstream,
        peer,
        path_and_query,
        _slot: slot,
    })
}

/// Headers never forwarded to a provider: the client's credentials, hop-by-hop headers and
/// the gateway's own controls.
const STRIPPED: &[&str] = &[
    "authorization",
    "x-api-key",
    "x-goog-api-key",
    "proxy-authorization",
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "cookie",
];

/// Rewrites the upstream request head: path, host, credentials.
pub fn rewrite(req: &mut RequestHeader, ctx: &RequestCtx) -> pingora::Result<()> {
    let Some(t) = &ctx.passthrough else {
        return Ok(());
    };
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
    req.insert_header(http::header::HOST, t.upstream.host_header.clone())?;
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
}
