//! The one integration-test crate: real freeway processes on loopback.

mod core;
mod errors;
mod harness;
mod media;
mod native;
mod observe;
mod ops;
mod passthrough;
mod responses;
mod routing;
mod sdk;
