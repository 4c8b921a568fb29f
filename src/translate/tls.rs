//! TLS transport sockets: Istio mutual TLS with pilotfish's certificates over SDS
//! (`default` + `ROOTCA`), DestinationRule SIMPLE / MUTUAL with files, and the server side
//! of inbound mTLS.

use super::secret::{DEFAULT, ROOTCA};
use super::*;
use crate::api::networking::ClientTlsSettings;
use crate::model::Service;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;

const TLS_SOCKET: &str = "envoy.transport_sockets.tls";

pub(crate) fn sds(name: &str) -> tls::SdsSecretConfig {
    tls::SdsSecretConfig {
        name: name.into(),
        sds_config: ads(),
    }
}

pub(crate) fn socket<T: prost::Message + prost::Name>(ctx: T) -> core::TransportSocket {
    core::TransportSocket {
        name: TLS_SOCKET.into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(any(ctx))),
    }
}

pub(crate) fn file(path: &str) -> Option<core::DataSource> {
    Some(core::DataSource {
        specifier: Some(core::data_source::Specifier::Filename(path.into())),
        ..Default::default()
    })
}

pub(crate) fn san_matchers(sans: &[String]) -> Vec<tls::SubjectAltNameMatcher> {
    sans.iter()
        .map(|s| tls::SubjectAltNameMatcher {
            san_type: if s.starts_with("spiffe://") {
                tls::subject_alt_name_matcher::SanType::Uri as i32
            } else {
                tls::subject_alt_name_matcher::SanType::Dns as i32
            },
            matcher: Some(matcher::StringMatcher {
                match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(s.clone())),
                ignore_case: false,
            }),
            ..Default::default()
        })
        .collect()
}

/// Istio's SNI for a mesh destination: `outbound_.<port>_.<subset>_.<host>`.
pub fn istio_sni(port: u32, subset: &str, host: &str) -> String {
    format!("outbound_.{port}_.{subset}_.{host}")
}

/// The identities a client accepts for a service: the SPIFFE IDs of its endpoints' service
/// accounts, plus any ServiceEntry subjectAltNames.
pub fn expected_identities(svc: &Service, trust_domain: &str, extra: &[String]) -> Vec<String> {
    let mut v: Vec<String> = svc
        .endpoints
        .iter()
        .filter(|e| !e.service_account.is_empty())
        .map(|e| {
            format!(
                "spiffe://{trust_domain}/ns/{}/sa/{}",
                e.namespace, e.service_account
            )
        })
        .chain(extra.iter().cloned())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Client side of Istio mTLS: our certificate, our roots, the server's identity checked.
pub fn istio_upstream(sni: &str, sans: &[String]) -> core::TransportSocket {
    socket(tls::UpstreamTlsContext {
        common_tls_context: Some(tls::CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds(DEFAULT)],
            validation_context_type: Some(
                tls::common_tls_context::ValidationContextType::CombinedValidationContext(
                    tls::common_tls_context::CombinedCertificateValidationContext {
                        default_validation_context: Some(tls::CertificateValidationContext {
                            match_typed_subject_alt_names: san_matchers(sans),
                            ..Default::default()
                        }),
                        validation_context_sds_secret_config: Some(sds(ROOTCA)),
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }),
        sni: sni.into(),
        ..Default::default()
    })
}

/// DestinationRule SIMPLE / MUTUAL with files on the proxy's disk.
pub fn file_upstream(t: &ClientTlsSettings, default_sni: &str) -> core::TransportSocket {
    let validation = (t.insecure_skip_verify != Some(true)).then(|| {
        tls::common_tls_context::ValidationContextType::ValidationContext(
            tls::CertificateValidationContext {
                trusted_ca: t.ca_certificates.as_deref().and_then(file),
                match_typed_subject_alt_names: san_matchers(&t.subject_alt_names),
                crl: t.ca_crl.as_deref().and_then(file),
                ..Default::default()
            },
        )
    });
    let certs = match (t.mode.as_deref(), &t.client_certificate, &t.private_key) {
        (Some("MUTUAL"), Some(c), Some(k)) => vec![tls::TlsCertificate {
            certificate_chain: file(c),
            private_key: file(k),
            ..Default::default()
        }],
        _ => vec![],
    };
    socket(tls::UpstreamTlsContext {
        common_tls_context: Some(tls::CommonTlsContext {
            tls_certificates: certs,
            validation_context_type: validation,
            ..Default::default()
        }),
        sni: t.sni.clone().unwrap_or_else(|| default_sni.to_string()),
        ..Default::default()
    })
}

/// Server side of Istio mTLS on the inbound listener: a client certificate is required and
/// must chain to the mesh roots.
pub fn istio_downstream() -> core::TransportSocket {
    socket(tls::DownstreamTlsContext {
        common_tls_context: Some(tls::CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds(DEFAULT)],
            validation_context_type: Some(
                tls::common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(
                    sds(ROOTCA),
                ),
            ),
            ..Default::default()
        }),
        require_client_certificate: boolv(true),
        ..Default::default()
    })
}

/// Istio's SDS name for a Kubernetes Secret named by `credentialName` (resolved in the
/// proxy's namespace), and for its CA certificate.
pub fn credential_sds_names(name: &str) -> (String, String) {
    (
        format!("kubernetes://{name}"),
        format!("kubernetes://{name}-cacert"),
    )
}

/// DestinationRule SIMPLE / MUTUAL with `credentialName`: the certificate (MUTUAL) and the
/// CA come over SDS from the named Secret.
pub fn credential_upstream(
    t: &ClientTlsSettings,
    name: &str,
    default_sni: &str,
) -> core::TransportSocket {
    let (cert, ca) = credential_sds_names(name);
    let mutual = t.mode.as_deref() == Some("MUTUAL");
    let validation = (t.insecure_skip_verify != Some(true)).then(|| {
        tls::common_tls_context::ValidationContextType::CombinedValidationContext(
            tls::common_tls_context::CombinedCertificateValidationContext {
                default_validation_context: Some(tls::CertificateValidationContext {
                    match_typed_subject_alt_names: san_matchers(&t.subject_alt_names),
                    ..Default::default()
                }),
                validation_context_sds_secret_config: Some(sds(&ca)),
                ..Default::default()
            },
        )
    });
    socket(tls::UpstreamTlsContext {
        common_tls_context: Some(tls::CommonTlsContext {
            tls_certificate_sds_secret_configs: if mutual { vec![sds(&cert)] } else { vec![] },
            validation_context_type: validation,
            ..Default::default()
        }),
        sni: t.sni.clone().unwrap_or_else(|| default_sni.to_string()),
        ..Default::default()
    })
}
