//! Assembling the Pingora server from a config: the gateway service, its background tasks
//! and, for `freeway demo` and tests, the simulated providers.

use crate::config::Config;
use crate::providers::DnsRefresher;
use crate::proxy::Gateway;
use crate::routing::board::{Board, BoardFlusher};
use crate::sim::SimProvider;
use crate::state::State;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Process-level switches from the command line.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessFlags {
    pub daemon: bool,
    pub upgrade: bool,
}

fn pingora_server(config: &Config, flags: ProcessFlags) -> Server {
    let s = &config.server;
    let conf = ServerConf {
        threads: s.threads,
        grace_period_seconds: Some(s.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(s.graceful_shutdown_timeout_seconds),
        pid_file: s.pid_file.clone(),
        upgrade_sock: s.upgrade_sock.clone(),
        daemon: flags.daemon,
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: flags.upgrade,
        daemon: flags.daemon,
        nocapture: false,
        test: false,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    server
}

/// The gateway server for `config`, plus simulated providers on `sim_listen` (demo, tests).
pub fn build(config: Config, flags: ProcessFlags, sim_listen: &[String]) -> Server {
    let mut server = pingora_server(&config, flags);
    let listen = config.server.listen.clone();
    let board = match Board::open(Path::new(&config.storage.path)) {
        Ok(b) => Arc::new(b),
        Err(e) => {
            eprintln!("freeway: config error at `storage.path`: {e}");
            std::process::exit(1);
        }
    };
    let guards = match crate::proxy::guard::Guards::build(&config) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("freeway: {e}");
            std::process::exit(1);
        }
    };
    let state = State::new(config, &board);
    log_startup(&state);
    let upstreams = state.upstreams.clone();

    let mut gw = Gateway::new(state, board.clone());
    guards.install(&mut gw, &mut server, &board);
    let mut gateway =
        pingora::proxy::http_proxy_service_with_name(&server.configuration, gw, "freeway");
    for addr in &listen {
        gateway.add_tcp(addr);
    }
    server.add_service(gateway);
    server.add_service(background_service("daily counters", BoardFlusher { board }));
    server.add_service(background_service(
        "dns refresh",
        DnsRefresher {
            upstreams,
            every: Duration::from_secs(60),
        },
    ));
    if !sim_listen.is_empty() {
        add_sim(&mut server, sim_listen);
    }
    server
}

/// A server running only simulated providers (`freeway sim`, used by tests and benches).
pub fn build_sim(listen: &[String], threads: usize) -> Server {
    let config = Config {
        server: crate::config::ServerConfig {
            threads,
            pid_file: format!("/tmp/freeway-sim-{}.pid", std::process::id()),
            upgrade_sock: format!("/tmp/freeway-sim-{}.sock", std::process::id()),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut server = pingora_server(&config, ProcessFlags::default());
    add_sim(&mut server, listen);
    server
}

fn add_sim(server: &mut Server, listen: &[String]) {
    let mut sim = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        SimProvider::default(),
        "simulated providers",
    );
    for addr in listen {
        sim.add_tcp(addr);
        log::warn!("SIMULATED providers listening on http://{addr} (not real models)");
    }
    server.add_service(sim);
}

fn log_startup(state: &State) {
    if state.auth.disabled() {
        log::warn!(
            "NO GATEWAY KEYS CONFIGURED: authentication is DISABLED and anyone who can reach \
             the listener may use every provider key. Set [auth].keys or [auth].key_hashes."
        );
    }
    for up in &state.upstreams {
        match &up.unavailable {
            None if up.simulated => log::warn!("provider `{}`: SIMULATED, routable", up.name),
            None => log::info!("provider `{}`: routable", up.name),
            Some(why) => log::info!("provider `{}`: not routable ({why})", up.name),
        }
    }
    log::info!(
        "{} of {} models routable",
        state.catalog.routable_count(),
        state.catalog.models.len()
    );
}
