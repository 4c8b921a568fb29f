use super::token::{forge, AuthError, LocalTokens};
use super::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use x509_parser::prelude::*;

fn ca(dir: &Path) -> Ca {
    Ca::load_or_create(&CaConfig {
        state_dir: dir.to_path_buf(),
        trust_domain: "cluster.local".into(),
        workload_ttl: Duration::from_secs(3600),
        ca_cert: None,
        ca_key: None,
        ca_chain: None,
        ..Default::default()
    })
    .unwrap()
}

fn id(ns: &str, sa: &str) -> Identity {
    Identity {
        namespace: ns.into(),
        service_account: sa.into(),
    }
}

#[test]
fn root_is_created_once_with_private_key_mode_0600_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let a = ca(dir.path());
    let mode = std::fs::metadata(dir.path().join("root-key.pem"))
        .unwrap()
        .permissions();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.mode() & 0o777, 0o600);
    let b = ca(dir.path());
    assert_eq!(
        a.bundle_pem(),
        b.bundle_pem(),
        "a restart must reuse the root"
    );
    let (_, root) = parse_x509_pem(a.bundle_pem().as_bytes()).unwrap();
    let root = root.parse_x509().unwrap();
    assert!(root.is_ca());
    assert_eq!(
        root.public_key().algorithm.algorithm,
        x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
    );
}

#[test]
fn svid_has_spiffe_san_usages_validity_and_chains_to_root() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca(dir.path());
    let s = ca
        .mint(&id("default", "reviews"), Duration::from_secs(86400))
        .unwrap();
    assert_eq!(s.spiffe_id, "spiffe://cluster.local/ns/default/sa/reviews");
    let (_, pem) = parse_x509_pem(s.cert_chain_pem.as_bytes()).unwrap();
    let cert = pem.parse_x509().unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    let uris: Vec<String> = san
        .value
        .general_names
        .iter()
        .filter_map(|g| match g {
            GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(uris, vec!["spiffe://cluster.local/ns/default/sa/reviews"]);
    assert!(!cert.is_ca());
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert!((86400..=86400 + 120).contains(&life), "lifetime {life}");
    // Signed by the root.
    let (_, rp) = parse_x509_pem(ca.bundle_pem().as_bytes()).unwrap();
    let root = rp.parse_x509().unwrap();
    cert.verify_signature(Some(root.public_key())).unwrap();
    assert!(s.key_pem.contains("PRIVATE KEY"));
    assert!(
        !format!("{s:?}").contains("PRIVATE KEY"),
        "Debug must not print the key"
    );
}

#[test]
fn svids_are_cached_and_reminted_at_half_life() {
    let dir = tempfile::tempdir().unwrap();
    let mut ca = ca(dir.path());
    ca.workload_ttl = Duration::from_secs(4);
    let i = id("default", "a");
    let s1 = ca.svid(&i, "proxy-1").unwrap();
    let s2 = ca.svid(&i, "proxy-2").unwrap();
    assert_eq!(
        s1.serial, s2.serial,
        "cached within the first half of its life"
    );
    let half = s1.issued_at + (s1.not_after.duration_since(s1.issued_at).unwrap()) / 2;
    assert_eq!(s1.rotate_at(), half);
    // Past half life the next request gets a new certificate.
    std::thread::sleep(Duration::from_millis(2100));
    let s3 = ca.svid(&i, "proxy-1").unwrap();
    assert_ne!(s3.serial, s1.serial, "re-minted after half life");
    assert!(s3.not_after > s1.not_after);
    let info = ca.issued();
    assert!(info
        .iter()
        .any(|i| i.holders.contains(&"proxy-1".to_string())));
    assert!(info
        .iter()
        .all(|i| !serde_json::to_string(i).unwrap().contains("PRIVATE")));
}

#[test]
fn rotation_schedule_is_half_life() {
    let dir = tempfile::tempdir().unwrap();
    let mut ca = ca(dir.path());
    ca.workload_ttl = Duration::from_secs(7200);
    let s = ca.svid(&id("ns", "sa"), "").unwrap();
    let due = s.rotate_at().duration_since(SystemTime::now()).unwrap();
    // Half of 2 h from issue: one hour from now.
    assert!(
        due > Duration::from_secs(3590) && due <= Duration::from_secs(3600),
        "{due:?}"
    );
    let again = ca.svid(&id("ns", "sa"), "").unwrap();
    assert_eq!(s.serial, again.serial);
    assert_eq!(ca.next_rotation(), Some(s.rotate_at()));
}

#[test]
fn tokens_round_trip_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let t = LocalTokens::load_or_create(dir.path()).unwrap();
    let good = t.sign(&id("default", "reviews"), Duration::from_secs(600));
    assert_eq!(t.check(&good).unwrap(), id("default", "reviews"));
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let base = serde_json::json!({"iss": "pilotfish", "aud": ["pilotfish"], "sub": "system:serviceaccount:default:reviews", "iat": now, "exp": now + 600});
    let with = |k: &str, v: serde_json::Value| {
        let mut c = base.clone();
        c[k] = v;
        c
    };
    let without = |k: &str| {
        let mut c = base.clone();
        c.as_object_mut().unwrap().remove(k);
        c
    };
    assert_eq!(
        t.check(&forge(&t, "ES256", base.clone())).unwrap(),
        id("default", "reviews")
    );
    assert_eq!(
        t.check(&forge(&t, "ES256", with("exp", (now - 3600).into()))),
        Err(AuthError::Expired)
    );
    assert_eq!(
        t.check(&forge(&t, "ES256", with("aud", "someone-else".into()))),
        Err(AuthError::Audience)
    );
    assert_eq!(
        t.check(&forge(&t, "ES256", with("iss", "evil".into()))),
        Err(AuthError::Issuer)
    );
    assert_eq!(
        t.check(&forge(&t, "ES256", with("sub", "alice".into()))),
        Err(AuthError::Subject)
    );
    assert_eq!(
        t.check(&forge(&t, "ES256", without("sub"))),
        Err(AuthError::MissingClaim("sub"))
    );
    assert_eq!(
        t.check(&forge(&t, "ES256", without("exp"))),
        Err(AuthError::MissingClaim("exp"))
    );
    assert_eq!(
        t.check(&forge(&t, "ES256", with("iat", (now + 3600).into()))),
        Err(AuthError::NotYetValid)
    );
    // alg none, with and without a signature.
    let none = forge(&t, "none", base.clone());
    assert!(matches!(t.check(&none), Err(AuthError::Algorithm(_))));
    let parts: Vec<&str> = none.split('.').collect();
    assert!(t.check(&format!("{}.{}.", parts[0], parts[1])).is_err());
    // HS256 confusion.
    assert!(matches!(
        t.check(&forge(&t, "HS256", base.clone())),
        Err(AuthError::Algorithm(_))
    ));
    // Wrong signature: a token from another key.
    let other_dir = tempfile::tempdir().unwrap();
    let other = LocalTokens::load_or_create(other_dir.path()).unwrap();
    assert_eq!(
        t.check(&other.sign(&id("default", "reviews"), Duration::from_secs(60))),
        Err(AuthError::Signature)
    );
    // Tampered claims.
    let p: Vec<&str> = good.split('.').collect();
    let evil_claims = B64E.encode(
        serde_json::to_vec(&with(
            "sub",
            "system:serviceaccount:kube-system:admin".into(),
        ))
        .unwrap(),
    );
    assert_eq!(
        t.check(&format!("{}.{}.{}", p[0], evil_claims, p[2])),
        Err(AuthError::Signature)
    );
    // Garbage.
    for g in ["", "abc", "a.b.c", "....", "\u{0}\u{1}", &"x".repeat(20000)] {
        assert!(t.check(g).is_err(), "{g:?}");
    }
    // The error text never contains the token.
    let e = t
        .check(&forge(&t, "ES256", with("exp", 1.into())))
        .unwrap_err()
        .to_string();
    assert!(!e.contains(&good[..20]));
}

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64E;
use base64::Engine;

#[test]
fn plug_in_intermediate_ca_signs_leaves_that_chain_to_the_users_root() {
    let dir = tempfile::tempdir().unwrap();
    // The user's root and an intermediate signed by it.
    let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut rp = CertificateParams::default();
    rp.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    rp.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    rp.distinguished_name.push(DnType::CommonName, "corp root");
    let root = rp.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(rp, root_key);
    let int_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ip = CertificateParams::default();
    ip.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ip.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ip.distinguished_name
        .push(DnType::CommonName, "mesh intermediate");
    let int = ip.signed_by(&int_key, &root_issuer).unwrap();
    let w = |n: &str, s: &str| {
        let p = dir.path().join(n);
        std::fs::write(&p, s).unwrap();
        p
    };
    let cfg = CaConfig {
        state_dir: dir.path().join("state"),
        trust_domain: "corp.example".into(),
        workload_ttl: Duration::from_secs(600),
        ca_cert: Some(w("ca-cert.pem", &int.pem())),
        ca_key: Some(w("ca-key.pem", &int_key.serialize_pem())),
        ca_chain: Some(w("cert-chain.pem", &root.pem())),
        ..Default::default()
    };
    let ca = Ca::load_or_create(&cfg).unwrap();
    assert_eq!(
        pem_blocks(&ca.bundle_pem()),
        pem_blocks(&root.pem()),
        "the trust anchor is the user's root"
    );
    let s = ca
        .mint(&id("default", "a"), Duration::from_secs(600))
        .unwrap();
    assert_eq!(s.spiffe_id, "spiffe://corp.example/ns/default/sa/a");
    let blocks = pem_blocks(&s.cert_chain_pem);
    assert_eq!(blocks.len(), 2, "leaf + intermediate");
    let (_, lp) = parse_x509_pem(blocks[0].as_bytes()).unwrap();
    let (_, ipem) = parse_x509_pem(blocks[1].as_bytes()).unwrap();
    let (_, rpem) = parse_x509_pem(root.pem().as_bytes()).unwrap();
    let (leaf, inter, rootc) = (
        lp.parse_x509().unwrap(),
        ipem.parse_x509().unwrap(),
        rpem.parse_x509().unwrap(),
    );
    leaf.verify_signature(Some(inter.public_key())).unwrap();
    inter.verify_signature(Some(rootc.public_key())).unwrap();
    // Only one of --ca-cert / --ca-key is an error that names the flags.
    let half = CaConfig {
        ca_key: None,
        ..cfg
    };
    let e = Ca::load_or_create(&half).err().unwrap().to_string();
    assert!(e.contains("--ca-cert") && e.contains("--ca-key"), "{e}");
    assert!(
        !dir.path().join("state").join("root-key.pem").exists(),
        "no self-made root with a plug-in CA"
    );
}

fn verify_by(leaf_chain: &str, root_pem: &str) -> bool {
    let (_, lp) = parse_x509_pem(leaf_chain.as_bytes()).unwrap();
    let (_, rp) = parse_x509_pem(root_pem.as_bytes()).unwrap();
    let (leaf, root) = (lp.parse_x509().unwrap(), rp.parse_x509().unwrap());
    leaf.verify_signature(Some(root.public_key())).is_ok()
}

#[test]
fn root_rotation_trusts_before_signing_and_retires_after_the_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = CaConfig {
        state_dir: dir.path().to_path_buf(),
        workload_ttl: Duration::from_secs(1),
        root_rotation_grace: Duration::from_millis(300),
        ..Default::default()
    };
    let ca = Ca::load_or_create(&cfg).unwrap();
    let old_root = ca.bundle_pem();
    let i = id("default", "a");
    let leaf_old = ca.svid(&i, "p").unwrap();
    assert!(!ca.maintain().unwrap(), "nothing to do without a next root");
    // 1. The next root joins the bundle; the old root still signs.
    Ca::prepare_root_rotation(&cfg).unwrap();
    assert!(
        Ca::prepare_root_rotation(&cfg).is_err(),
        "one rotation at a time"
    );
    let next_root = std::fs::read_to_string(dir.path().join("next-root-cert.pem")).unwrap();
    assert!(ca.maintain().unwrap());
    assert_eq!(pem_blocks(&ca.bundle_pem()).len(), 2);
    assert!(
        ca.bundle_pem().contains(next_root.trim()) && ca.bundle_pem().contains(old_root.trim())
    );
    let during = ca.mint(&i, Duration::from_secs(60)).unwrap();
    assert!(
        verify_by(&during.cert_chain_pem, &old_root),
        "the new root signs nothing before the grace period"
    );
    // A restart in this phase keeps the next root in the bundle.
    let again = Ca::load_or_create(&cfg).unwrap();
    assert_eq!(pem_blocks(&again.bundle_pem()).len(), 2);
    // 2. After the grace period the new root signs; cached leaves are re-minted.
    std::thread::sleep(Duration::from_millis(350));
    assert!(ca.maintain().unwrap());
    let leaf_new = ca.svid(&i, "p").unwrap();
    assert_ne!(leaf_new.serial, leaf_old.serial);
    assert!(
        verify_by(&leaf_new.cert_chain_pem, &next_root),
        "leaves now chain to the new root"
    );
    assert!(
        ca.bundle_pem().contains(old_root.trim()),
        "the old root stays trusted while its leaves live"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("root-cert.pem"))
            .unwrap()
            .trim(),
        next_root.trim()
    );
    assert!(!dir.path().join("next-root-key.pem").exists());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("root-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // 3. Once every leaf of the old root has expired (TTL 1 s + 60 s skew allowance), it goes.
    assert!(!ca.maintain().unwrap(), "not before the old leaves expire");
    std::fs::write(dir.path().join("retired-root.until"), "1").unwrap();
    let restarted = Ca::load_or_create(&cfg).unwrap();
    assert!(restarted.maintain().unwrap());
    assert_eq!(pem_blocks(&restarted.bundle_pem()).len(), 1);
    assert!(restarted.bundle_pem().contains(next_root.trim()));
    assert!(!dir.path().join("retired-root-cert.pem").exists());
}
