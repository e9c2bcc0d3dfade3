//! freeway: an OpenAI-compatible AI gateway on Pingora.
//!
//! A request flows one way: `proxy` (the Pingora phases) → `request` (parse once) →
//! `routing` (choose candidates) → `providers` (build the upstream request) →
//! `proxy::relay` (attempt loop, stream back). Before that, `conn` bounds client connections
//! (how many, how long a request head may take, how long one may idle). `config` and
//! `state` hold what the config builds; `sim` is the simulated provider used by
//! `freeway demo` and the tests.

pub mod auth;
pub mod cache;
pub mod checks;
pub mod client_ip;
pub mod config;
pub mod conn;
pub mod demo;
pub mod errors;
pub mod guardrails;
pub mod image_files;
pub mod json_scan;
pub mod limits;
pub mod live;
pub mod messages;
pub mod multipart;
pub mod observe;
pub mod providers;
pub mod proxy;
pub mod reload;
pub mod request;
pub mod responses;
pub mod routing;
pub mod secrets;
pub mod server;
pub mod sim;
pub mod sse;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod time;
pub mod video_jobs;
