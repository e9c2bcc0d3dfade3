//! The one integration-test crate: real freeway processes on loopback.

mod core;
mod errors;
mod harness;
mod native;
mod ops;
mod passthrough;
mod routing;
mod sdk;
