//! pilotfish: a service-mesh control plane that drives stock Envoy over xDS.
//!
//! ```text
//!  source ──► model::Index ──► World (Arc) ──► translate ──► xds cache ──► xds server ──► Envoy
//! ```
//! `api`, `model` and `translate` are pure (no tokio, tonic, axum); see `tests/layering.rs`.
#![deny(unsafe_code)] // allowed only in `mem` (two libc allocator calls)

pub mod api;
pub mod app;
pub mod authz;
pub mod bootstrap;
pub mod ca;
pub mod check;
pub mod cli;
pub mod debug;
pub mod envoy_json;
pub mod inject;
pub mod iptables;
pub mod mem;
pub mod metrics;
pub mod model;
pub mod source;
pub mod telemetry;
pub mod translate;
pub mod webhook;
pub mod xds;
