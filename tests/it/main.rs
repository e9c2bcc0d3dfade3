//! The one integration-test crate: real freeway processes on loopback.

mod core;
mod errors;
mod harness;
mod observe;
mod ops;
mod routing;
mod sdk;
