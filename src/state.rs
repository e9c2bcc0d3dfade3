//! Everything a request needs that is built from the config: one immutable value, swapped
//! whole on reload so in-flight requests finish on the config they started with.

use crate::auth::Auth;
use crate::config::Config;
use crate::live::endpoints::Pool;
use crate::live::slots::Slots;
use crate::live::{Board, LiveBoard, ModelState, ProviderState};
use crate::providers::{PeerTimeouts, Upstream};
use crate::routing::routes::Routes;
use crate::routing::{Catalog, Router};
use std::sync::Arc;
use std::time::Duration;

pub struct State {
    pub config: Config,
    pub catalog: Catalog,
    /// Indexed like `config.providers`.
    pub upstreams: Vec<Arc<Upstream>>,
    /// Live per-provider state (a rejected key), indexed like `config.providers`; reset by
    /// a config change.
    pub providers: Vec<ProviderState>,
    /// Requests in flight per provider against its `max_connections`, indexed like
    /// `config.providers` (the counts are the board's, across config generations).
    pub slots: Vec<Slots>,
    /// Endpoint pools, indexed like `config.providers` (`None`: a single `base_url`, which
    /// costs the request path nothing). Endpoint states are the board's, across reloads.
    pub pools: Vec<Option<Pool>>,
    /// Live per-model state (health, daily count), indexed like `catalog.models`; shared
    /// with the board, so it outlives this config generation.
    pub models: Vec<Arc<ModelState>>,
    pub auth: Auth,
    pub router: Router,
    /// Request/token rate estimates (shared with the board, across config generations).
    pub pace: Arc<crate::live::pace::Pace>,
    /// Every configured secret, to scrub from upstream text (`secrets`).
    pub secrets: crate::secrets::Secrets,
    /// `[[guardrails]]`, compiled once for this generation.
    pub guardrails: Arc<crate::guardrails::Guardrails>,
}

impl State {
    pub fn new(config: Config, board: &Board) -> State {
        let timeouts = PeerTimeouts {
            connect: Duration::from_millis(config.server.connect_timeout_ms),
            idle: Duration::from_secs(60),
        };
        let upstreams: Vec<Arc<Upstream>> = config
            .providers
            .iter()
            .map(|p| Arc::new(Upstream::new(p, timeouts)))
            .collect();
        let unavailable: Vec<Option<String>> =
            upstreams.iter().map(|u| u.unavailable.clone()).collect();
        let mut catalog = Catalog::build(&config, &unavailable);
        for m in &mut catalog.models {
            m.several_choices = crate::providers::format(m.provider_kind).several_choices;
        }
        let auth = Auth::with_keys(&config.auth, &config.keys);
        let models = catalog
            .models
            .iter()
            .map(|m| board.model(&m.qualified))
            .collect();
        let providers = upstreams.iter().map(|_| ProviderState::default()).collect();
        let slots = config
            .providers
            .iter()
            .map(|p| Slots::new(board.provider_slots(&p.name), p.max_connections))
            .collect();
        let pools = upstreams
            .iter()
            .map(|up| {
                let hc = up.health_check.as_ref()?;
                let endpoints = up
                    .endpoints
                    .iter()
                    .map(|e| {
                        let s = board.endpoint(&up.name, &e.configured, &e.address);
                        (s, e.weight, e.max_connections)
                    })
                    .collect();
                Some(Pool::new(endpoints, hc.unhealthy_after))
            })
            .collect();
        let router = Router::new(Routes::new(&config.routes));
        let secrets = crate::secrets::Secrets::from_config(&config);
        let guardrails =
            crate::guardrails::Guardrails::new(&config.guardrails).unwrap_or_else(|e| {
                // `Config::parse` compiled every pattern already.
                log::error!("guardrails not compiled: {e}");
                Default::default()
            });
        State {
            guardrails: Arc::new(guardrails),
            secrets,
            config,
            catalog,
            upstreams,
            providers,
            slots,
            pools,
            models,
            auth,
            router,
            pace: board.pace.clone(),
        }
    }

    /// The live view the router reads.
    pub fn live(&self) -> LiveBoard<'_> {
        LiveBoard {
            models: &self.models,
            providers: &self.providers,
            slots: &self.slots,
            pools: &self.pools,
            catalog: &self.catalog,
            pace: &self.pace,
        }
    }

    /// Every endpoint state of this generation's pools (the board keeps only these).
    pub fn endpoint_states(&self) -> Vec<Arc<crate::live::endpoints::EndpointState>> {
        self.pools
            .iter()
            .flatten()
            .flat_map(|p| p.endpoints.iter().cloned())
            .collect()
    }
}
