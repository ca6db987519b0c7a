//! Pulling images: the native puller against real registries (auth,
//! errors, faults, manifest shapes), the containerd backend against private
//! containerds, and the harness pieces those tests stand on.

#[path = "../common/mod.rs"]
#[macro_use]
mod common;

mod auth;
mod containerd_backend;
mod convert;
mod errors;
mod faults;
mod harness_selftest;
mod manifests;
