//! Assembling the Pingora server from a config: the gateway service, its background tasks
//! and, for `freeway demo` and tests, the simulated providers.

use crate::config::Config;
use crate::conn::BoundedHttp;
use crate::live::{Board, BoardFlusher};
use crate::observe::{metrics, Observer};
use crate::proxy::Gateway;
use crate::reload::Upkeep;
use crate::sim::SimProvider;
use crate::state::State;
use pingora::apps::http_app::ServeHttp;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use std::path::{Path, PathBuf};
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
        // A daemon would otherwise run from `/`, breaking relative paths in the config.
        working_directory: std::env::current_dir().ok(),
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
/// `config_path`: where `config` came from, re-read on SIGHUP or change (`None`: no reload).
pub fn build(
    config: Config,
    config_path: Option<PathBuf>,
    flags: ProcessFlags,
    sim_listen: &[String],
) -> Server {
    let mut server = pingora_server(&config, flags);
    let listen = config.server.listen.clone();
    let board = match Board::open(Path::new(&config.storage.path)) {
        Ok(b) => Arc::new(b),
        Err(e) => {
            eprintln!("freeway: config error at `storage.path`: {e}");
            std::process::exit(1);
        }
    };
    let (observer, log_writer) = Observer::new(&config);
    let metrics_listen = config.metrics.listen.clone();
    let guards = match crate::proxy::guard::Guards::build(&config) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("freeway: {e}");
            std::process::exit(1);
        }
    };
    let exporter = crate::telemetry::install(&config);
    let state = State::new(config, &board);
    log_startup(&state);
    let mut gw = Gateway::new(state, board.clone(), Arc::new(observer));
    metrics::register_model_state(gw.state.clone());
    let upkeep = Upkeep {
        path: config_path,
        state: gw.state.clone(),
        board: board.clone(),
        dns_every: Duration::from_secs(60),
    };

    guards.install(&mut gw, &mut server, &board);
    crate::conn::ensure_fd_limit(gw.state().config.server.max_connections);
    let checker = crate::checks::Checker::new(gw.state.clone());
    let live = gw.state.clone();
    let gate = gw.gate.clone();
    let proxy = pingora::proxy::http_proxy(&server.configuration, gw);
    let mut gateway = Service::new("freeway".into(), BoundedHttp::new(proxy, live, gate));
    for addr in &listen {
        // No L4 read buffer: on cleartext HTTP it only adds a copy, and Pingora's 64 KiB
        // per connection made an idle connection cost ~80 KB of RSS instead of ~16 KB.
        let buffers = L4BufferSettings::default().read(0);
        gateway.add_listener(ListenerConfig::tcp(addr.as_str()).l4_buffer(buffers));
    }
    server.add_service(gateway);
    server.add_service(background_service("daily counters", BoardFlusher { board }));
    server.add_service(background_service("config reload and dns", upkeep));
    server.add_service(background_service("endpoint health checks", checker));
    if let Some(writer) = log_writer {
        server.add_service(background_service("request log writer", writer));
    }
    if let Some(exporter) = exporter {
        server.add_service(background_service("telemetry exporter", exporter));
    }
    if !metrics_listen.is_empty() {
        let mut svc = Service::new("prometheus metrics".into(), MetricsApp);
        svc.add_tcp(&metrics_listen);
        server.add_service(svc);
    }
    if !sim_listen.is_empty() {
        add_sim(&mut server, sim_listen);
    }
    server
}

/// `[metrics].listen`: the Prometheus text format on its own port, for any path.
struct MetricsApp;

#[async_trait::async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, _http: &mut ServerSession) -> http::Response<Vec<u8>> {
        let mut resp = http::Response::new(metrics::render());
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        resp
    }
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
