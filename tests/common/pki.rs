//! Test PKI: one CA per registry, signing a TLS server cert and a token
//! signing cert.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

pub struct Ca {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
}

/// A leaf certificate and its key, PEM and DER forms ready for files/JWTs.
pub struct Leaf {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    /// PKCS#8 PEM; Go's `tls.X509KeyPair` and `jsonwebtoken` both accept it.
    pub key_pem: String,
}

impl Ca {
    pub fn new(common_name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("CA cert");
        Ca { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    pub fn der(&self) -> Vec<u8> {
        self.cert.der().to_vec()
    }

    /// Server cert for 127.0.0.1 / localhost.
    pub fn server_leaf(&self) -> Leaf {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        // rustls/webpki ignores an IP written as a DNS SAN, but some clients
        // look for it there, so both forms are present.
        params
            .subject_alt_names
            .push(SanType::DnsName("127.0.0.1".try_into().expect("dns name")));
        params
            .distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// Token-signing cert. No extended key usage: Go's x509 verification
    /// (used by distribution on the x5c chain) defaults to requiring
    /// ServerAuth, and a cert with no EKU at all satisfies any usage.
    pub fn signing_leaf(&self) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, "test token signer");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign leaf");
        Leaf {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// Writes `contents` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    p
}
