//! The one integration-test crate: real freeway processes on loopback.

mod architecture;
mod budgets;
mod cache;
mod conformance;
mod contract;
mod core;
mod errors;
mod harness;
mod limits;
mod media;
mod messages;
mod native;
mod observe;
mod ops;
mod otlp;
mod package;
mod passthrough;
mod pipeline;
mod pools;
mod redis_proc;
mod resources;
mod responses;
mod routing;
mod sdk;
mod security;
mod telemetry;
