//! The one integration-test crate: real freeway processes on loopback.

mod cache;
mod core;
mod errors;
mod harness;
mod limits;
mod native;
mod ops;
mod passthrough;
mod redis_proc;
mod routing;
mod sdk;
