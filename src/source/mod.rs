//! Config sources. Each turns the outside world into model events.
pub mod file;
pub mod jwks;
pub mod kube;
pub mod last_good;
pub mod remote_secrets;
pub mod status;
