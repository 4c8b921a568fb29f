//! RequestAuthentication → Envoy's `jwt_authn` filter on the inbound connection managers.
//!
//! Every rule of the RequestAuthentications applying to a workload is a provider; the one
//! requirement is "any provider, or no token at all" (Istio's semantics): a request without
//! a token passes on to authorization (where `requestPrincipals` can require one), a
//! request with a token that no provider verifies gets 401. The verified payload lands in
//! dynamic metadata (`envoy.filters.http.jwt_authn` / `payload`), which the RBAC rules for
//! `requestPrincipals` and `request.auth.*` read.
//!
//! Keys are always inline: pilotfish fetches `jwksUri`s itself. A set it could not fetch is
//! replaced by `UNAVAILABLE_JWKS`, a public key whose private half was never kept, so the
//! issuer's tokens are refused (fail closed; never an old or fallback key).

use super::*;
use crate::model::JwtProviderCfg;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3 as jwt;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use std::collections::HashMap;

pub const JWT_FILTER: &str = "envoy.filters.http.jwt_authn";

/// A P-256 public key generated once for this purpose; its private key was discarded
/// unsaved, so nothing verifies against it.
pub const UNAVAILABLE_JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","alg":"ES256","kid":"pilotfish-jwks-unavailable","x":"uwoohAnXBhx54nvdQrwgPz5iXvYPGydcAQxFRedPMMk","y":"WO_Lmuq6u2OYXlLwrqJCgX5fJntKDBhe9vnD7SymgeU"}]}"#;

fn provider(p: &JwtProviderCfg) -> jwt::JwtProvider {
    let r = &p.rule;
    let jwks = p.jwks.as_deref().unwrap_or(UNAVAILABLE_JWKS);
    jwt::JwtProvider {
        issuer: r.issuer.clone(),
        audiences: r.audiences.clone(),
        forward: r.forward_original_token.unwrap_or(false),
        from_headers: r
            .from_headers
            .iter()
            .map(|h| jwt::JwtHeader {
                name: h.name.clone(),
                value_prefix: h.prefix.clone(),
            })
            .collect(),
        from_params: r.from_params.clone(),
        from_cookies: r.from_cookies.clone(),
        forward_payload_header: r.output_payload_to_header.clone().unwrap_or_default(),
        payload_in_metadata: crate::translate::authz::JWT_PAYLOAD.into(),
        claim_to_headers: r
            .output_claim_to_headers
            .iter()
            .map(|c| jwt::JwtClaimToHeader {
                header_name: c.header.clone(),
                claim_name: c.claim.clone(),
                ..Default::default()
            })
            .collect(),
        jwks_source_specifier: Some(jwt::jwt_provider::JwksSourceSpecifier::LocalJwks(
            core::DataSource {
                specifier: Some(core::data_source::Specifier::InlineString(jwks.into())),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

/// The `jwt_authn` filter for these rules (None: no RequestAuthentication applies).
pub fn filter(providers: &[JwtProviderCfg]) -> Option<hcm::HttpFilter> {
    if providers.is_empty() {
        return None;
    }
    let mut any: Vec<jwt::JwtRequirement> = providers
        .iter()
        .map(|p| jwt::JwtRequirement {
            requires_type: Some(jwt::jwt_requirement::RequiresType::ProviderName(
                p.name.clone(),
            )),
        })
        .collect();
    any.push(jwt::JwtRequirement {
        requires_type: Some(jwt::jwt_requirement::RequiresType::AllowMissing(
            Default::default(),
        )),
    });
    let config = jwt::JwtAuthentication {
        providers: providers
            .iter()
            .map(|p| (p.name.clone(), provider(p)))
            .collect::<HashMap<_, _>>(),
        rules: vec![jwt::RequirementRule {
            r#match: Some(envoy_types::pb::envoy::config::route::v3::RouteMatch {
                path_specifier: Some(
                    envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier::Prefix(
                        "/".into(),
                    ),
                ),
                ..Default::default()
            }),
            requirement_type: Some(jwt::requirement_rule::RequirementType::Requires(
                jwt::JwtRequirement {
                    requires_type: Some(jwt::jwt_requirement::RequiresType::RequiresAny(
                        jwt::JwtRequirementOrList { requirements: any },
                    )),
                },
            )),
        }],
        ..Default::default()
    };
    Some(hcm::HttpFilter {
        name: JWT_FILTER.into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(
            super::canon::any_of::<jwt::JwtAuthentication>(super::canon::jwt_authn(&config)),
        )),
        ..Default::default()
    })
}
