//! Everything a request needs that is built from the config: one immutable value, swapped
//! whole on reload so in-flight requests finish on the config they started with.

use crate::auth::Auth;
use crate::config::Config;
use crate::providers::{PeerTimeouts, Upstream};
use crate::routing::{Catalog, Router};
use std::sync::Arc;
use std::time::Duration;

pub struct State {
    pub config: Config,
    pub catalog: Catalog,
    /// Indexed like `config.providers`.
    pub upstreams: Vec<Arc<Upstream>>,
    pub auth: Auth,
    pub router: Router,
}

impl State {
    pub fn new(config: Config) -> State {
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
        let catalog = Catalog::build(&config, &unavailable);
        let auth = Auth::new(&config.auth);
        State {
            config,
            catalog,
            upstreams,
            auth,
            router: Router::default(),
        }
    }
}
