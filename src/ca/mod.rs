//! Citadel: the mesh's certificate authority. It keeps a root (created on first start in
//! the state directory, or plugged in by the user), mints SPIFFE X.509 SVIDs for workload
//! identities, re-mints them at half life, and signs and verifies the bearer tokens that
//! authenticate proxies in file mode.
//!
//! ```text
//!  state-dir/root-cert.pem, root-key.pem (0600) ──► Ca ──► Svid per identity (cached, rotated)
//!                                  token-key.pem ──► LocalTokens (ES256 JWT sign / verify)
//! ```
//! Private keys never leave this module except inside a `Svid` bound for the SDS stream of
//! the identity it was minted for; `Debug` impls redact them.

pub mod review;
pub mod shared;
pub mod token;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// A workload identity: `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Identity {
    pub namespace: String,
    pub service_account: String,
}

impl Identity {
    pub fn spiffe(&self, trust_domain: &str) -> String {
        format!(
            "spiffe://{trust_domain}/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }
}

/// A minted X.509 SVID: leaf + chain, and its private key.
pub struct Svid {
    pub spiffe_id: String,
    /// Leaf first, then any intermediates (PEM).
    pub cert_chain_pem: String,
    /// PKCS#8 PEM. Only ever sent over SDS to the identity it belongs to.
    pub key_pem: String,
    pub serial: String,
    /// Backdated a little for clock skew.
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub issued_at: SystemTime,
}

impl fmt::Debug for Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl Svid {
    /// Time to re-mint: half of the lifetime (from issue to expiry) has passed.
    pub fn rotate_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.issued_at)
            .unwrap_or_default();
        self.issued_at + life / 2
    }
}

/// What the debug page shows of an issued certificate (never the key).
#[derive(Debug, Clone, serde::Serialize)]
pub struct IssuedInfo {
    pub spiffe_id: String,
    pub serial: String,
    pub not_after_unix: u64,
    pub issued_unix: u64,
    pub holders: Vec<String>,
}

pub struct CaConfig {
    pub state_dir: PathBuf,
    pub trust_domain: String,
    pub workload_ttl: Duration,
    /// Plug-in CA: a root or intermediate certificate and its key, plus an optional chain
    /// up to the root (the last certificate of the chain is the trust anchor).
    pub ca_cert: Option<PathBuf>,
    pub ca_key: Option<PathBuf>,
    pub ca_chain: Option<PathBuf>,
    /// Root rotation: how long a new root sits in the trust bundle before it signs.
    pub root_rotation_grace: Duration,
}

impl Default for CaConfig {
    fn default() -> Self {
        CaConfig {
            state_dir: PathBuf::from("pilotfish-state"),
            trust_domain: "cluster.local".into(),
            workload_ttl: Duration::from_secs(86400),
            ca_cert: None,
            ca_key: None,
            ca_chain: None,
            root_rotation_grace: Duration::from_secs(60),
        }
    }
}

/// What signs leaves now.
struct Signer {
    issuer: Issuer<'static, KeyPair>,
    /// Intermediates appended to every leaf (empty for a self-signed root).
    chain_pem: String,
    /// The trust anchor of this signer.
    root_pem: String,
}

/// A root rotation in progress (self-made root only): the next root is trusted before it
/// signs anything; the retired one stays trusted until every leaf it signed has expired.
#[derive(Default)]
struct Rotation {
    /// (certificate, key, when it joined the bundle)
    pending: Option<(String, String, SystemTime)>,
    /// (certificate, when it leaves the bundle)
    retired: Option<(String, SystemTime)>,
}

pub struct Ca {
    pub trust_domain: String,
    signer: std::sync::RwLock<Signer>,
    rotation: Mutex<Rotation>,
    /// The state directory when the root is self-made (root rotation lives there).
    state_dir: Option<PathBuf>,
    grace: Duration,
    workload_ttl: Duration,
    svids: Mutex<BTreeMap<Identity, Arc<Svid>>>,
    /// Identities whose certificate expired from the cache at half life.
    rotating: Mutex<std::collections::BTreeSet<Identity>>,
    issued: Mutex<BTreeMap<String, IssuedInfo>>,
    /// Workload certificates minted (Istio: `citadel_server_success_cert_issuance_count`).
    pub issued_total: prometheus_client::metrics::counter::Counter,
    /// Re-mints of an identity that already had a certificate.
    pub rotations_total: prometheus_client::metrics::counter::Counter,
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|source| CaError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn write_private(path: &Path, data: &str) -> Result<(), CaError> {
    let err = |source| CaError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(data.as_bytes()).map_err(err)
}

fn write_public(path: &Path, data: &str) -> Result<(), CaError> {
    std::fs::write(path, data).map_err(|source| CaError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Now, as the `next-root.since` file holds it (Unix seconds, to the millisecond).
pub(crate) fn since_now() -> String {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{:.3}", d.as_secs_f64())
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn random_serial() -> (SerialNumber, String) {
    let mut b: [u8; 16] = rand::random();
    b[0] &= 0x7f; // positive
    b[0] |= 0x01; // no leading zero byte
    (SerialNumber::from_slice(&b), hex::encode(b))
}

impl Ca {
    /// Load the CA from flags or the state directory, creating a root on first start.
    pub fn load_or_create(cfg: &CaConfig) -> Result<Ca, CaError> {
        let (cert_pem, key_pem, chain_pem, plugin_bundle) = match (&cfg.ca_cert, &cfg.ca_key) {
            (Some(c), Some(k)) => {
                let cert = read(c)?;
                let key = read(k)?;
                let chain = match &cfg.ca_chain {
                    Some(p) => read(p)?,
                    None => String::new(),
                };
                // The trust anchor: the chain's last certificate, or the CA cert itself.
                let bundle = pem_blocks(&chain)
                    .last()
                    .cloned()
                    .unwrap_or_else(|| cert.clone());
                let chain_for_leaves = if chain.is_empty() {
                    String::new()
                } else {
                    format!("{}{}", ensure_nl(&cert), chain_without_last(&chain))
                };
                (cert, key, chain_for_leaves, bundle)
            }
            (None, None) => {
                std::fs::create_dir_all(&cfg.state_dir).map_err(|source| CaError::Write {
                    path: cfg.state_dir.clone(),
                    source,
                })?;
                let cp = cfg.state_dir.join("root-cert.pem");
                let kp = cfg.state_dir.join("root-key.pem");
                if !(cp.exists() && kp.exists()) {
                    let (cert, key) = new_root(&cfg.trust_domain)?;
                    write_private(&kp, &key)?;
                    write_public(&cp, &cert)?;
                }
                let cert = read(&cp)?;
                (cert.clone(), read(&kp)?, String::new(), cert)
            }
            _ => {
                return Err(CaError::Invalid {
                    what: "--ca-cert / --ca-key".into(),
                    reason: "both must be given".into(),
                })
            }
        };
        let key = KeyPair::from_pem(&key_pem).map_err(|e| CaError::Invalid {
            what: "CA key".into(),
            reason: e.to_string(),
        })?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| CaError::Invalid {
            what: "CA certificate".into(),
            reason: e.to_string(),
        })?;
        let self_made = cfg.ca_cert.is_none();
        let ca = Ca {
            trust_domain: cfg.trust_domain.clone(),
            signer: std::sync::RwLock::new(Signer {
                issuer,
                chain_pem,
                root_pem: if self_made {
                    cert_pem.clone()
                } else {
                    String::new()
                },
            }),
            rotation: Mutex::new(Rotation::default()),
            state_dir: self_made.then(|| cfg.state_dir.clone()),
            grace: cfg.root_rotation_grace,
            workload_ttl: cfg.workload_ttl,
            svids: Mutex::new(BTreeMap::new()),
            rotating: Mutex::new(Default::default()),
            issued: Mutex::new(BTreeMap::new()),
            issued_total: Default::default(),
            rotations_total: Default::default(),
        };
        if !self_made {
            ca.signer.write().unwrap().root_pem = plugin_bundle;
        }
        ca.load_rotation_state()?;
        Ok(ca)
    }

    /// The trust bundle (PEM) proxies validate peers against: the signing root, plus the
    /// next or the retired root while a rotation is under way.
    pub fn bundle_pem(&self) -> String {
        let mut b = ensure_nl(&self.signer.read().unwrap().root_pem);
        let r = self.rotation.lock().unwrap();
        if let Some((c, _, _)) = &r.pending {
            b.push_str(&ensure_nl(c));
        }
        if let Some((c, _)) = &r.retired {
            b.push_str(&ensure_nl(c));
        }
        b
    }

    fn load_rotation_state(&self) -> Result<(), CaError> {
        self.adopt_state().map(|_| ())
    }

    /// Brings the CA in line with its state directory (self-made roots only): the signing
    /// root, the next root and the retired one are whatever the files say. A replica that
    /// mirrors the Kubernetes Secret follows the leader's rotation steps this way (a new
    /// signing root re-mints every cached leaf). True when anything changed.
    pub fn adopt_state(&self) -> Result<bool, CaError> {
        let Some(dir) = &self.state_dir else {
            return Ok(false);
        };
        let mut changed = false;
        let root = read(&dir.join("root-cert.pem"))?;
        if root != self.signer.read().unwrap().root_pem {
            let key = read(&dir.join("root-key.pem"))?;
            let kp = KeyPair::from_pem(&key).map_err(|e| CaError::Invalid {
                what: "root key".into(),
                reason: e.to_string(),
            })?;
            let issuer = Issuer::from_ca_cert_pem(&root, kp).map_err(|e| CaError::Invalid {
                what: "root".into(),
                reason: e.to_string(),
            })?;
            {
                let mut s = self.signer.write().unwrap();
                s.root_pem = root;
                s.issuer = issuer;
            }
            let mut svids = self.svids.lock().unwrap();
            self.rotating.lock().unwrap().extend(svids.keys().cloned());
            svids.clear();
            changed = true;
        }
        let mut r = self.rotation.lock().unwrap();
        let (nc, nk) = (
            dir.join("next-root-cert.pem"),
            dir.join("next-root-key.pem"),
        );
        let pending = if nc.exists() && nk.exists() {
            // When the rotation began: written with the next root (so every replica
            // promotes it at the same moment), else the file's time.
            let since = read(&dir.join("next-root.since"))
                .ok()
                .and_then(|s| s.trim().parse::<f64>().ok())
                .filter(|t| t.is_finite() && *t >= 0.0)
                .map(|t| SystemTime::UNIX_EPOCH + Duration::from_secs_f64(t))
                .or_else(|| std::fs::metadata(&nc).and_then(|m| m.modified()).ok())
                .unwrap_or_else(SystemTime::now);
            Some((read(&nc)?, read(&nk)?, since))
        } else {
            None
        };
        if pending.as_ref().map(|p| &p.0) != r.pending.as_ref().map(|p| &p.0) {
            r.pending = pending;
            changed = true;
        }
        let (rc, ru) = (
            dir.join("retired-root-cert.pem"),
            dir.join("retired-root.until"),
        );
        let retired = if rc.exists() {
            let until = read(&ru)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(0);
            Some((
                read(&rc)?,
                SystemTime::UNIX_EPOCH + Duration::from_secs(until),
            ))
        } else {
            None
        };
        if retired != r.retired {
            r.retired = retired;
            changed = true;
        }
        Ok(changed)
    }

    /// The roots in the trust bundle, for `/debug/certz`: role (signing, next, retired),
    /// SHA-256 of the DER, expiry. No key material.
    pub fn roots(&self) -> Vec<serde_json::Value> {
        let describe = |role: &str, pem: &str| {
            pem_blocks(pem)
                .iter()
                .filter_map(|b| {
                    let (_, pem) = x509_parser::pem::parse_x509_pem(b.as_bytes()).ok()?;
                    let der = pem.contents;
                    let (_, c) = x509_parser::parse_x509_certificate(&der).ok()?;
                    Some(serde_json::json!({
                        "role": role,
                        "sha256": hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&der)),
                        "subject": c.subject().to_string(),
                        "not_after_unix": c.validity().not_after.timestamp(),
                    }))
                })
                .collect::<Vec<_>>()
        };
        let mut out = describe("signing", &self.signer.read().unwrap().root_pem);
        let r = self.rotation.lock().unwrap();
        if let Some((c, _, _)) = &r.pending {
            out.extend(describe("next", c));
        }
        if let Some((c, _)) = &r.retired {
            out.extend(describe("retired", c));
        }
        out
    }

    /// Start a root rotation: write the next root into the state directory. A running
    /// pilotfish picks it up (`maintain`). Self-made roots only.
    pub fn prepare_root_rotation(cfg: &CaConfig) -> Result<PathBuf, CaError> {
        if cfg.ca_cert.is_some() {
            return Err(CaError::Invalid {
                what: "root rotation".into(),
                reason: "a plug-in CA is rotated by replacing --ca-cert/--ca-key".into(),
            });
        }
        let (nc, nk) = (
            cfg.state_dir.join("next-root-cert.pem"),
            cfg.state_dir.join("next-root-key.pem"),
        );
        if nc.exists() || cfg.state_dir.join("retired-root-cert.pem").exists() {
            return Err(CaError::Invalid {
                what: "root rotation".into(),
                reason: "a rotation is already under way".into(),
            });
        }
        let (cert, key) = new_root(&cfg.trust_domain)?;
        write_public(&cfg.state_dir.join("next-root.since"), &since_now())?;
        write_private(&nk, &key)?;
        write_public(&nc, &cert)?;
        Ok(nc)
    }

    /// Advance a root rotation; true when the bundle or the signer changed (push SDS).
    /// 1. a next root appears: it joins the bundle; the old root still signs.
    /// 2. after the grace period it becomes the signer; every cached leaf is re-minted;
    ///    the old root stays in the bundle as retired.
    /// 3. once every leaf the old root signed has expired, it leaves the bundle.
    pub fn maintain(&self) -> Result<bool, CaError> {
        let Some(dir) = self.state_dir.clone() else {
            return Ok(false);
        };
        let mut changed = self.adopt_state()?;
        let now = SystemTime::now();
        let promote = {
            let r = self.rotation.lock().unwrap();
            matches!(&r.pending, Some((_, _, since)) if *since + self.grace <= now)
                && r.retired.is_none()
        };
        if promote {
            let (cert, key, _) = self.rotation.lock().unwrap().pending.take().unwrap();
            let kp = KeyPair::from_pem(&key).map_err(|e| CaError::Invalid {
                what: "next root key".into(),
                reason: e.to_string(),
            })?;
            let issuer = Issuer::from_ca_cert_pem(&cert, kp).map_err(|e| CaError::Invalid {
                what: "next root".into(),
                reason: e.to_string(),
            })?;
            let old = {
                let mut s = self.signer.write().unwrap();
                let old = std::mem::replace(&mut s.root_pem, cert.clone());
                s.issuer = issuer;
                old
            };
            // Leaves signed by the old root live at most one workload lifetime.
            // (Whole seconds, as the file holds it.)
            let until = SystemTime::UNIX_EPOCH
                + Duration::from_secs(unix(now + self.workload_ttl + Duration::from_secs(60)));
            write_public(&dir.join("retired-root-cert.pem"), &old)?;
            write_public(&dir.join("retired-root.until"), &unix(until).to_string())?;
            let ren = |a: &str, b: &str| {
                std::fs::rename(dir.join(a), dir.join(b)).map_err(|source| CaError::Write {
                    path: dir.join(b),
                    source,
                })
            };
            ren("next-root-key.pem", "root-key.pem")?;
            ren("next-root-cert.pem", "root-cert.pem")?;
            let _ = std::fs::remove_file(dir.join("next-root.since"));
            self.rotation.lock().unwrap().retired = Some((old, until));
            // Re-mint every cached leaf with the new root.
            let mut svids = self.svids.lock().unwrap();
            self.rotating.lock().unwrap().extend(svids.keys().cloned());
            svids.clear();
            changed = true;
        }
        let retire =
            matches!(&self.rotation.lock().unwrap().retired, Some((_, until)) if *until <= now);
        if retire {
            self.rotation.lock().unwrap().retired = None;
            let _ = std::fs::remove_file(dir.join("retired-root-cert.pem"));
            let _ = std::fs::remove_file(dir.join("retired-root.until"));
            changed = true;
        }
        Ok(changed)
    }

    fn leaf(&self, sans: Vec<SanType>, cn: &str, ttl: Duration) -> Result<Svid, CaError> {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, self.trust_domain.clone());
        if !cn.is_empty() {
            dn.push(DnType::CommonName, cn);
        }
        p.distinguished_name = dn;
        let now = SystemTime::now();
        let not_before = now - Duration::from_secs(60);
        let not_after = now + ttl;
        p.not_before = not_before.into();
        p.not_after = not_after.into();
        let (serial, serial_hex) = random_serial();
        p.serial_number = Some(serial);
        p.subject_alt_names = sans;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let signer = self.signer.read().unwrap();
        let cert = p.signed_by(&key, &signer.issuer)?;
        Ok(Svid {
            spiffe_id: String::new(),
            cert_chain_pem: format!("{}{}", ensure_nl(&cert.pem()), signer.chain_pem),
            key_pem: key.serialize_pem(),
            serial: serial_hex,
            not_before,
            not_after,
            issued_at: now,
        })
    }

    /// Mint a fresh SVID (uncached).
    pub fn mint(&self, id: &Identity, ttl: Duration) -> Result<Svid, CaError> {
        let spiffe = id.spiffe(&self.trust_domain);
        let uri = spiffe.clone().try_into().map_err(|_| CaError::Invalid {
            what: "identity".into(),
            reason: format!("{spiffe} is not a valid URI"),
        })?;
        let mut s = self.leaf(vec![SanType::URI(uri)], "", ttl)?;
        s.spiffe_id = spiffe;
        Ok(s)
    }

    /// The current SVID of an identity, minted or re-minted (at half life) as needed.
    /// `holder` is the proxy asking, for the debug page.
    pub fn svid(&self, id: &Identity, holder: &str) -> Result<Arc<Svid>, CaError> {
        let mut svids = self.svids.lock().unwrap();
        let now = SystemTime::now();
        let current = svids.get(id).filter(|s| s.rotate_at() > now).cloned();
        let svid = match current {
            Some(s) => s,
            None => {
                let s = Arc::new(self.mint(id, self.workload_ttl)?);
                self.issued_total.inc();
                let was_rotating = self.rotating.lock().unwrap().remove(id);
                if svids.insert(id.clone(), s.clone()).is_some() || was_rotating {
                    self.rotations_total.inc();
                }
                s
            }
        };
        let mut issued = self.issued.lock().unwrap();
        let info = issued
            .entry(svid.serial.clone())
            .or_insert_with(|| IssuedInfo {
                spiffe_id: svid.spiffe_id.clone(),
                serial: svid.serial.clone(),
                not_after_unix: unix(svid.not_after),
                issued_unix: unix(svid.issued_at),
                holders: Vec::new(),
            });
        if !holder.is_empty() && !info.holders.iter().any(|h| h == holder) {
            info.holders.push(holder.to_string());
        }
        // Forget expired entries.
        let now_u = unix(now);
        issued.retain(|_, i| i.not_after_unix > now_u);
        Ok(svid)
    }

    /// Drop cached SVIDs that are due for re-minting (the next request mints anew); returns
    /// whether any was due. Run periodically, then tell the streams to re-fetch.
    pub fn expire_due(&self) -> bool {
        let now = SystemTime::now();
        let mut svids = self.svids.lock().unwrap();
        let before = svids.len();
        let due: Vec<Identity> = svids
            .iter()
            .filter(|(_, s)| s.rotate_at() <= now)
            .map(|(k, _)| k.clone())
            .collect();
        // The next request mints anew; `rotating` makes that count as a rotation.
        for k in &due {
            svids.remove(k);
        }
        self.rotating.lock().unwrap().extend(due);
        before != svids.len()
    }

    /// The earliest time any cached SVID is due for re-minting.
    pub fn next_rotation(&self) -> Option<SystemTime> {
        self.svids
            .lock()
            .unwrap()
            .values()
            .map(|s| s.rotate_at())
            .min()
    }

    /// Certificates issued and still valid (for `/debug/certz`).
    pub fn issued(&self) -> Vec<IssuedInfo> {
        self.issued.lock().unwrap().values().cloned().collect()
    }

    /// A serving certificate for the xDS TLS port.
    pub fn server_cert(&self, dns_names: &[String], ttl: Duration) -> Result<Svid, CaError> {
        let mut sans = Vec::new();
        for n in dns_names {
            // An address (a webhook reached by IP, out of the cluster) is an IP SAN.
            if let Ok(ip) = n.parse::<std::net::IpAddr>() {
                sans.push(SanType::IpAddress(ip));
                continue;
            }
            let ia5 = n.clone().try_into().map_err(|_| CaError::Invalid {
                what: "DNS name".into(),
                reason: format!("{n:?} is not valid"),
            })?;
            sans.push(SanType::DnsName(ia5));
        }
        let cn = dns_names.first().cloned().unwrap_or_default();
        self.leaf(sans, &cn, ttl)
    }
}

pub(crate) fn new_root(trust_domain: &str) -> Result<(String, String), CaError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain);
    dn.push(DnType::CommonName, "pilotfish root CA");
    p.distinguished_name = dn;
    let now = SystemTime::now();
    p.not_before = (now - Duration::from_secs(3600)).into();
    p.not_after = (now + Duration::from_secs(10 * 365 * 86400)).into();
    p.serial_number = Some(random_serial().0);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn ensure_nl(s: &str) -> String {
    if s.ends_with('\n') {
        s.to_string()
    } else {
        format!("{s}\n")
    }
}

/// Split a PEM bundle into its blocks.
pub fn pem_blocks(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in s.lines() {
        if line.starts_with("-----BEGIN") {
            cur.clear();
        }
        cur.push_str(line);
        cur.push('\n');
        if line.starts_with("-----END") {
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

fn chain_without_last(chain: &str) -> String {
    let blocks = pem_blocks(chain);
    blocks[..blocks.len().saturating_sub(1)].concat()
}

#[cfg(test)]
mod tests;
