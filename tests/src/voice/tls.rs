//! The test CA and the `localhost` server certificate of the voice double.
//!
//! One CA (and one leaf certificate) per test process: every [`super::VoiceServer`] of a process
//! presents the same certificate and writes nothing new, so tests running in parallel threads
//! can all point the process-wide `SSL_CERT_FILE` at the same file without racing each other.
//! The PEM lives at `$TMPDIR/caldera-voice-ca-<pid>.pem`; files of dead processes are removed
//! when a later process creates its own.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub(crate) struct TestPki {
    pub(crate) ca_file: PathBuf,
    pub(crate) server_config: Arc<rustls::ServerConfig>,
}

static PKI: OnceLock<TestPki> = OnceLock::new();

/// The process-wide test PKI, created on first use (a few milliseconds).
pub(crate) fn pki() -> &'static TestPki {
    PKI.get_or_init(create)
}

fn create() -> TestPki {
    let ca_key = KeyPair::generate().expect("generate CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "caldera voice test CA");
    dn.push(DnType::OrganizationName, "caldera-tests");
    ca_params.distinguished_name = dn;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign CA");
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate().expect("generate server key");
    let mut leaf_params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("server cert params");
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "localhost");
    leaf_params.distinguished_name = dn;
    leaf_params.is_ca = IsCa::ExplicitNoCa;
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf_params.use_authority_key_identifier_extension = true;
    let leaf_cert = leaf_params.signed_by(&leaf_key, &issuer).expect("sign server cert");

    let dir = std::env::temp_dir();
    remove_stale_files(&dir);
    let ca_file = dir.join(format!("caldera-voice-ca-{}.pem", std::process::id()));
    std::fs::write(&ca_file, ca_cert.pem()).expect("write voice test CA file");

    let chain: Vec<CertificateDer<'static>> = vec![leaf_cert.der().clone(), ca_cert.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server certificate");
    TestPki { ca_file, server_config: Arc::new(config) }
}

/// Removes `caldera-voice-ca-<pid>.pem` files of processes that no longer exist.
fn remove_stale_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(pid) = name.strip_prefix("caldera-voice-ca-").and_then(|s| s.strip_suffix(".pem")) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
