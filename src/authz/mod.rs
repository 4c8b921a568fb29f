//! ext_authz and the central decision: the decision logic is pure, the gRPC part is thin.

pub mod builtin;
pub mod decide;
pub mod server;
