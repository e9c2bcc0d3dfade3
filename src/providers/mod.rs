//! Providers at run time: where they are, how to authenticate, and how to talk to them.
//!
//! An [`Upstream`] is built once per configured provider: its base URL and key resolved from
//! the environment, its auth and extra headers pre-built, and its socket address resolved off
//! the request path (Pingora's `HttpPeer::new` would resolve DNS synchronously).
//! One module per wire format builds the upstream request for that format.

pub mod openai;

use crate::config::{
    expand_env_placeholders, resolve_secret, ProviderConfig, ProviderKind, UpstreamUrl,
};
use arc_swap::ArcSwapOption;
use http::{HeaderName, HeaderValue};
use pingora::upstreams::peer::HttpPeer;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Timeouts applied to every upstream connection.
#[derive(Debug, Clone, Copy)]
pub struct PeerTimeouts {
    pub connect: Duration,
    /// How long a pooled idle upstream connection is kept.
    pub idle: Duration,
}

/// One configured provider, ready to send requests to.
pub struct Upstream {
    pub name: String,
    pub kind: ProviderKind,
    pub simulated: bool,
    /// `None` when the base URL did not resolve (missing `env:` variable).
    pub url: Option<UpstreamUrl>,
    /// `Authorization: Bearer …` for the provider's key, when it has one.
    pub auth: Option<HeaderValue>,
    pub host_header: HeaderValue,
    pub extra_headers: Vec<(HeaderName, HeaderValue)>,
    /// Why this provider is not routable, if it is not.
    pub unavailable: Option<String>,
    insecure: bool,
    timeouts: PeerTimeouts,
    peer: ArcSwapOption<HttpPeer>,
}

impl Upstream {
    pub fn new(cfg: &ProviderConfig, timeouts: PeerTimeouts) -> Upstream {
        let mut unavailable = None;
        let url = match expand_env_placeholders(&cfg.base_url) {
            Some(u) => match UpstreamUrl::parse(&u) {
                Ok(u) => Some(u),
                Err(e) => {
                    unavailable = Some(format!("base_url is invalid: {e}"));
                    None
                }
            },
            None => {
                unavailable = Some(format!(
                    "base_url `{}` needs an environment variable that is not set",
                    cfg.base_url
                ));
                None
            }
        };
        let auth = match &cfg.api_key {
            None => None,
            Some(spec) => match resolve_secret(spec) {
                Some(key) => HeaderValue::from_str(&format!("Bearer {key}"))
                    .map(|mut v| {
                        v.set_sensitive(true);
                        v
                    })
                    .map_err(|_| {
                        unavailable.get_or_insert("api_key contains invalid characters".into());
                    })
                    .ok(),
                None => {
                    unavailable.get_or_insert(match spec.strip_prefix("env:") {
                        Some(var) => format!("{var} is not set"),
                        None => "api_key is empty".into(),
                    });
                    None
                }
            },
        };
        if !cfg.kind.supported() {
            unavailable.get_or_insert(format!(
                "provider kind `{}` is not supported by this build yet",
                cfg.kind.as_str()
            ));
        }
        let host_header = url
            .as_ref()
            .and_then(|u| HeaderValue::from_str(&u.host_header()).ok())
            .unwrap_or_else(|| HeaderValue::from_static("invalid"));
        let extra_headers = cfg
            .headers
            .iter()
            .filter_map(|(k, v)| {
                let v = resolve_secret(v)?;
                Some((
                    HeaderName::from_bytes(k.as_bytes()).ok()?,
                    HeaderValue::from_str(&v).ok()?,
                ))
            })
            .collect();
        let up = Upstream {
            name: cfg.name.clone(),
            kind: cfg.kind,
            simulated: cfg.simulated,
            url,
            auth,
            host_header,
            extra_headers,
            unavailable,
            insecure: cfg.insecure_skip_verify,
            timeouts,
            peer: ArcSwapOption::empty(),
        };
        // An IP literal needs no resolution: build its peer now.
        if let Some(u) = &up.url {
            if let Ok(ip) = u.host.parse::<IpAddr>() {
                up.peer
                    .store(Some(Arc::new(up.make_peer(SocketAddr::new(ip, u.port)))));
            }
        }
        up
    }

    /// Whether the host is a name that must be resolved (and re-resolved) by DNS.
    pub fn needs_dns(&self) -> bool {
        self.unavailable.is_none()
            && self
                .url
                .as_ref()
                .is_some_and(|u| u.host.parse::<IpAddr>().is_err())
    }

    fn make_peer(&self, addr: SocketAddr) -> HttpPeer {
        let (tls, sni) = match &self.url {
            Some(u) => (u.tls, u.host.clone()),
            None => (false, String::new()),
        };
        let mut peer = HttpPeer::new(addr, tls, sni);
        let o = &mut peer.options;
        o.connection_timeout = Some(self.timeouts.connect);
        o.total_connection_timeout = Some(self.timeouts.connect * 2);
        o.idle_timeout = Some(self.timeouts.idle);
        if self.insecure {
            o.verify_cert = false;
            o.verify_hostname = false;
        }
        peer
    }

    /// The peer to connect to; resolves the host now if it has never been resolved.
    pub async fn peer(&self) -> Result<Arc<HttpPeer>, String> {
        if let Some(p) = self.peer.load_full() {
            return Ok(p);
        }
        self.resolve().await?;
        self.peer
            .load_full()
            .ok_or_else(|| format!("`{}` has no resolved address", self.name))
    }

    /// Resolves the host asynchronously and stores the first address.
    pub async fn resolve(&self) -> Result<(), String> {
        let Some(u) = &self.url else {
            return Err(format!("`{}` has no base URL", self.name));
        };
        let mut addrs = tokio::net::lookup_host((u.host.as_str(), u.port))
            .await
            .map_err(|e| format!("cannot resolve `{}`: {e}", u.host))?;
        let addr = addrs
            .next()
            .ok_or_else(|| format!("`{}` resolved to no address", u.host))?;
        let current = self.peer.load();
        if current.as_ref().and_then(|p| p._address.as_inet().copied()) != Some(addr) {
            self.peer.store(Some(Arc::new(self.make_peer(addr))));
        }
        Ok(())
    }

    /// The full upstream path for an API path such as `/chat/completions`.
    pub fn path(&self, api_path: &str) -> String {
        let prefix = self.url.as_ref().map_or("", |u| u.path.as_str());
        format!("{prefix}{api_path}")
    }
}

/// Re-resolves provider hostnames periodically, off the request path.
pub struct DnsRefresher {
    pub upstreams: Vec<Arc<Upstream>>,
    pub every: Duration,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for DnsRefresher {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        loop {
            for up in self.upstreams.iter().filter(|u| u.needs_dns()) {
                if let Err(e) = up.resolve().await {
                    log::warn!("provider `{}`: {e}", up.name);
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(self.every) => {}
            }
        }
    }
}
