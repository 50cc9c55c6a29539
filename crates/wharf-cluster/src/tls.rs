//! The cluster's certificates and the rustls configurations built from them.
//!
//! Every member holds an [`Identity`]: the cluster CA's certificate, its own certificate (for
//! the name [`SERVER_NAME`], used for both ends of a connection) and its key, and, unless the
//! operator provided the certificates, the CA's key, with which it issues certificates to
//! joiners (see [`crate::enroll`]). Both ends of every cluster connection present a
//! certificate the CA signed (mutual TLS 1.3), so a process without one cannot even finish the
//! TLS handshake.
//!
//! Files, in `DATA_DIR/tls/` (mode 0700; keys 0600): `ca.pem`, `ca.key` (if this member can
//! issue), `node.pem`, `node.key`. Certificates made here have no practical expiry (rcgen's
//! default validity, to the year 4096): a cluster replaces them by replacing its CA, see the
//! README's "Security" section.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SerialNumber, SignatureAlgorithm, PKCS_ECDSA_P256_SHA256,
};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use wharf_proto::NodeId;

/// The name in every member's certificate, and the one a member checks when it dials another:
/// a certificate proves "a member of this cluster", not which member (the ractor_cluster
/// handshake inside the TLS session names the node).
pub const SERVER_NAME: &str = "wharf-cluster";

/// The common name of a CA made by Wharf.
const CA_NAME: &str = "Wharf cluster CA";

/// Why certificates could not be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file does not hold what it should.
    #[error("{path} does not hold a PEM {what}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// A certificate, a key.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// rcgen failed.
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the certificates or key.
    #[error("the cluster certificates cannot be used: {0}")]
    Config(#[from] rustls::Error),
    /// The peer-certificate verifier could not be built.
    #[error("the cluster CA cannot verify peers: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// Only some of the operator's files were named.
    #[error("--tls-cert, --tls-key and --tls-ca go together: give all three or none")]
    Partial,
    /// This member cannot issue certificates.
    #[error("this member holds no cluster CA key, so it cannot issue certificates")]
    NoCaKey,
    /// A joiner sent something that is not a public key.
    #[error("the joiner's public key is not an uncompressed P-256 point")]
    BadPublicKey,
}

/// Certificate files an operator provides instead of letting Wharf make them.
#[derive(Debug, Clone)]
pub struct OperatorFiles {
    /// This member's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA that signs every member's certificate (PEM).
    pub ca: PathBuf,
}

/// What this member presents and trusts.
pub struct Identity {
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
    /// The CA's key, on members that issue certificates.
    ca_key: Option<KeyPair>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("can_issue", &self.ca_key.is_some()).finish_non_exhaustive()
    }
}

/// The TLS configurations of one member, built once.
#[derive(Clone)]
pub struct TlsConfigs {
    /// For connections this member accepts: it presents its certificate and requires one.
    pub server: Arc<rustls::ServerConfig>,
    /// For connections it dials.
    pub client: Arc<rustls::ClientConfig>,
}

impl Identity {
    /// A new cluster: a new CA, and this member's certificate signed by it.
    pub fn new_cluster(node: NodeId) -> Result<Identity, TlsError> {
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let ca = ca_params().self_signed(&ca_key)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = member_params(node)?.signed_by(&key, &Issuer::new(ca_params(), &ca_key))?;
        Ok(Identity {
            ca: ca.der().clone(),
            chain: vec![cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            ca_key: Some(ca_key),
        })
    }

    /// The identity stored in `dir` (see the module doc), or `None` if there is none yet.
    pub fn load(dir: &Path) -> Result<Option<Identity>, TlsError> {
        if !dir.join("node.pem").exists() {
            return Ok(None);
        }
        let ca_key = match std::fs::read_to_string(dir.join("ca.key")) {
            Ok(pem) => Some(KeyPair::from_pem(&pem).map_err(|e| parse_error(&dir.join("ca.key"), "key", e))?),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(TlsError::Read { path: dir.join("ca.key"), source }),
        };
        let mut identity = Identity::load_files(&OperatorFiles {
            cert: dir.join("node.pem"),
            key: dir.join("node.key"),
            ca: dir.join("ca.pem"),
        })?;
        identity.ca_key = ca_key;
        Ok(Some(identity))
    }

    /// The operator's files. A member started this way issues no certificates.
    pub fn load_files(files: &OperatorFiles) -> Result<Identity, TlsError> {
        let chain = CertificateDer::pem_file_iter(&files.cert)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| parse_error(&files.cert, "certificate", e))?;
        if chain.is_empty() {
            return Err(parse_error(&files.cert, "certificate", "no CERTIFICATE block"));
        }
        let ca = CertificateDer::from_pem_file(&files.ca).map_err(|e| parse_error(&files.ca, "certificate", e))?;
        let key = match PrivateKeyDer::from_pem_file(&files.key).map_err(|e| parse_error(&files.key, "key", e))? {
            PrivateKeyDer::Pkcs8(key) => key,
            _ => return Err(parse_error(&files.key, "key", "not a PKCS#8 key (BEGIN PRIVATE KEY)")),
        };
        Ok(Identity {
            ca,
            chain,
            key,
            ca_key: None,
        })
    }

    /// Writes this identity to `dir`, creating it with mode 0700; keys get mode 0600.
    pub fn save(&self, dir: &Path) -> Result<(), TlsError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| TlsError::Write { path: dir.to_owned(), source })?;
        // Also when it existed already.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|source| TlsError::Write { path: dir.to_owned(), source })?;
        write_file(&dir.join("ca.pem"), &pem("CERTIFICATE", &self.ca), 0o644)?;
        let chain: String = self.chain.iter().map(|cert| pem("CERTIFICATE", cert)).collect();
        write_file(&dir.join("node.pem"), &chain, 0o644)?;
        write_file(&dir.join("node.key"), &pem("PRIVATE KEY", self.key.secret_pkcs8_der()), 0o600)?;
        if let Some(ca_key) = &self.ca_key {
            write_file(&dir.join("ca.key"), &ca_key.serialize_pem(), 0o600)?;
        }
        Ok(())
    }

    /// Whether this member can issue certificates to joiners.
    pub fn can_issue(&self) -> bool {
        self.ca_key.is_some()
    }

    /// The CA's certificate (DER).
    pub fn ca_der(&self) -> &[u8] {
        &self.ca
    }

    /// The CA's key (PKCS#8 DER), on a member that has it.
    pub(crate) fn ca_key_der(&self) -> Option<Vec<u8>> {
        self.ca_key.as_ref().map(KeyPair::serialize_der)
    }

    /// Signs a certificate for node `node`'s `public_key` (an uncompressed P-256 point).
    pub(crate) fn issue(&self, node: NodeId, public_key: &[u8]) -> Result<Vec<u8>, TlsError> {
        let ca_key = self.ca_key.as_ref().ok_or(TlsError::NoCaKey)?;
        let public_key = P256PublicKey::new(public_key)?;
        let cert = member_params(node)?.signed_by(&public_key, &Issuer::new(ca_params(), ca_key))?;
        Ok(cert.der().to_vec())
    }

    /// The identity of a joiner once its certificate came back: its own key, the CA, and, if
    /// the member that issued it sent one, the CA's key.
    pub(crate) fn enrolled(
        key: &KeyPair,
        ca: Vec<u8>,
        cert: Vec<u8>,
        ca_key: Option<Vec<u8>>,
    ) -> Result<Identity, TlsError> {
        let ca_key = match ca_key {
            Some(der) => Some(KeyPair::try_from(der)?),
            None => None,
        };
        let identity = Identity {
            ca: CertificateDer::from(ca),
            chain: vec![CertificateDer::from(cert)],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            ca_key,
        };
        // Fails now, with a clear error, rather than at the first connection.
        identity.configs()?;
        Ok(identity)
    }

    /// The rustls configurations: TLS 1.3 only, each side requiring a certificate of the CA.
    pub fn configs(&self) -> Result<TlsConfigs, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone())?;
        let roots = Arc::new(roots);
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), PrivateKeyDer::Pkcs8(self.key.clone_key()))?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(self.chain.clone(), PrivateKeyDer::Pkcs8(self.key.clone_key()))?;
        Ok(TlsConfigs {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// A server configuration that presents this member's certificate but trusts only a CA
    /// whose key is thrown away: no client can complete a handshake with it. It guards the
    /// listener ractor_cluster's `NodeServer` always opens (see [`crate::Cluster::start`]).
    pub(crate) fn refuse_all_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let nobody_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = ca_params();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "nobody");
        let nobody = params.self_signed(&nobody_key)?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(nobody.der().clone())?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), PrivateKeyDer::Pkcs8(self.key.clone_key()))?;
        Ok(Arc::new(server))
    }
}

/// The name a member checks in another's certificate.
pub(crate) fn server_name() -> ServerName<'static> {
    ServerName::try_from(SERVER_NAME).expect("a valid DNS name")
}

/// A fresh key for a joiner, and its public key as sent to the member that signs it.
pub(crate) fn new_member_key() -> Result<(KeyPair, Vec<u8>), TlsError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let public = key.der_bytes().to_vec();
    Ok((key, public))
}

/// The parameters of a CA made by Wharf. Issuing needs only its name and key usages, so the
/// same parameters rebuild the issuer from the stored key.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.serial_number = Some(random_serial());
    params
}

fn member_params(node: NodeId) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(vec![SERVER_NAME.to_owned()])?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, format!("wharf member {node}"));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    Ok(params)
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    // Positive, as RFC 5280 wants.
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

/// A joiner's public key, as rcgen signs it.
struct P256PublicKey<'a>(&'a [u8]);

impl<'a> P256PublicKey<'a> {
    fn new(bytes: &'a [u8]) -> Result<Self, TlsError> {
        // An uncompressed SEC 1 point: 0x04, then X and Y of 32 bytes each.
        if bytes.len() != 65 || bytes[0] != 0x04 {
            return Err(TlsError::BadPublicKey);
        }
        Ok(P256PublicKey(bytes))
    }
}

impl PublicKeyData for P256PublicKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

fn pem(tag: &str, der: &[u8]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {tag}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {tag}-----\n"));
    out
}

fn write_file(path: &Path, content: &str, mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let error = |source| TlsError::Write { path: path.to_owned(), source };
    let temporary = path.with_extension("tmp");
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)
        .map_err(error)?;
    file.write_all(content.as_bytes()).map_err(error)?;
    file.sync_all().map_err(error)?;
    std::fs::rename(&temporary, path).map_err(error)
}

fn parse_error(path: &Path, what: &'static str, reason: impl std::fmt::Display) -> TlsError {
    TlsError::Parse {
        path: path.to_owned(),
        what,
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_cluster_issues_certificates_that_survive_a_save_and_load() {
        let first = Identity::new_cluster(NodeId(1)).unwrap();
        let (key, public) = new_member_key().unwrap();
        let cert = first.issue(NodeId(2), &public).unwrap();
        let joiner = Identity::enrolled(&key, first.ca_der().to_vec(), cert, None).unwrap();
        assert!(!joiner.can_issue());
        let dir = tempfile::tempdir().unwrap();
        first.save(dir.path()).unwrap();
        let loaded = Identity::load(dir.path()).unwrap().expect("saved");
        assert!(loaded.can_issue());
        loaded.configs().unwrap();
        use std::os::unix::fs::PermissionsExt;
        for (file, mode) in [("ca.key", 0o600), ("node.key", 0o600), ("node.pem", 0o644)] {
            let meta = std::fs::metadata(dir.path().join(file)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, mode, "{file}");
        }
        assert_eq!(std::fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn a_public_key_of_the_wrong_shape_is_refused() {
        let first = Identity::new_cluster(NodeId(1)).unwrap();
        assert!(matches!(first.issue(NodeId(2), &[4u8; 10]), Err(TlsError::BadPublicKey)));
    }
}
