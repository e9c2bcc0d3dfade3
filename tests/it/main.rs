//! The one integration-test crate: real freeway processes on loopback.

mod architecture;
mod cache;
mod conformance;
mod contract;
mod core;
mod errors;
mod guardrails;
mod harness;
mod limits;
mod media;
mod messages;
mod native;
mod observe;
mod ops;
mod package;
mod passthrough;
mod pipeline;
mod redis_proc;
mod resources;
mod responses;
mod routing;
mod sdk;
mod security;
