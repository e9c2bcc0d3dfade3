//! The floor under freeway's cost per request: a bare Pingora `ProxyHttp` hop (one worker
//! thread, pooled upstream connections), which forwards every request to one upstream
//! untouched, as nginx does in `benches/load.sh`. Whatever this costs, freeway (built on the
//! same Pingora 0.9) cannot go below; `PINGORA=1 bash benches/load.sh` measures it beside
//! nginx and freeway.
//!
//!   pingora_hop LISTEN UPSTREAM      e.g. pingora_hop 127.0.0.1:9000 127.0.0.1:9001
//!
//! Run by `cargo bench` (or `cargo test --benches`) without those arguments, it returns at
//! once: it is a bench target only so that it is built with the release profile and kept
//! out of the product binary.

use async_trait::async_trait;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::upstreams::peer::HttpPeer;

struct Hop {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Hop {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream] = args.as_slice() else {
        return; // run by `cargo bench` / `cargo test --benches`: nothing to measure here
    };
    let conf = ServerConf {
        threads: 1,
        // Stopped by the bench with SIGTERM: exit at once, not after Pingora's 60 s grace.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: false,
        daemon: false,
        nocapture: false,
        test: false,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    let mut service = pingora::proxy::http_proxy_service(
        &server.configuration,
        Hop {
            upstream: upstream.clone(),
        },
    );
    service.add_tcp(listen);
    server.add_service(service);
    server.run_forever();
}
