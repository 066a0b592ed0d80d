//! TLS for the public listeners: rustls server configs built from PEM files,
//! the SNI certificate resolver, and what a verified client certificate
//! says (for routes that demand one).
//!
//! Owns: certificate and key loading (with errors `check` can print), the
//! protocol versions (TLS 1.2 and 1.3 only), ALPN (`h2`, `http/1.1`) and
//! client-certificate verification against a CA bundle. Must not: accept
//! connections (`listener`), decide requests (`pipeline`).
//!
//! Every config is built with an explicit aws-lc-rs provider, so no
//! process-wide default provider is needed or installed.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

/// The TLS versions every listener accepts: 1.3 and 1.2, nothing older.
pub static VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// ALPN protocols offered, in server preference order.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Whether a listener asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// A handshake without a certificate the CA bundle verifies fails.
    Required,
    /// A certificate is asked for; without one the handshake succeeds
    /// (routes that demand one refuse the request); a presented one must
    /// verify, or the handshake fails.
    Optional,
}

/// The provider every config uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads a certificate chain (leaf first) and its private key from PEM
/// files and checks that the key belongs to the leaf.
pub fn load_key_pair(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, String> {
    let chain = load_certs(cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!(
            "{}: no usable private key: {}",
            key.display(),
            pem_error(&e)
        )
    })?;
    CertifiedKey::from_der(chain, key_der, provider)
        .map(Arc::new)
        .map_err(|e| {
            format!(
                "{} / {}: key and certificate do not belong together: {e}",
                cert.display(),
                key.display()
            )
        })
}

/// Every certificate of a PEM file; none is an error.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {}", path.display(), pem_error(&e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {}", path.display(), pem_error(&e)))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate found", path.display()));
    }
    Ok(certs)
}

fn pem_error(e: &rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(io) => io.to_string(),
        rustls_pki_types::pem::Error::NoItemsFound => "no PEM item found".into(),
        other => format!("{other:?}"),
    }
}

/// Every certificate revocation list of a PEM file; none is an error.
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let crls = CertificateRevocationListDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {}", path.display(), pem_error(&e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {}", path.display(), pem_error(&e)))?;
    if crls.is_empty() {
        return Err(format!("{}: no PEM X509 CRL found", path.display()));
    }
    for crl in &crls {
        webpki::OwnedCertRevocationList::from_der(crl)
            .map_err(|e| format!("{}: not a usable CRL: {e:?}", path.display()))?;
    }
    Ok(crls)
}

/// Reads a CA bundle for client-certificate verification.
pub fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// Chooses the certificate by the client's SNI name: an exact name, then a
/// `*.example.com` entry covering exactly one more label (as certificate
/// wildcards do), else the default. Clients without SNI (IP addresses) get
/// the default.
#[derive(Debug)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the suffix after `*.` (`example.com`).
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    pub fn new(default: Arc<CertifiedKey>) -> Self {
        SniResolver {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default,
        }
    }

    /// Adds `name` (`a.example.com` or `*.example.com`); `false` if the
    /// name was already taken.
    pub fn add(&mut self, name: &str, key: Arc<CertifiedKey>) -> bool {
        let name = normalize_name(name);
        match name.strip_prefix("*.") {
            Some(suffix) => self.wildcard.insert(suffix.to_string(), key).is_none(),
            None => self.exact.insert(name, key).is_none(),
        }
    }

    /// The certificate for an SNI name.
    pub fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(sni) = sni else {
            return self.default.clone();
        };
        let name = normalize_name(sni);
        if let Some(k) = self.exact.get(&name) {
            return k.clone();
        }
        if let Some((_, parent)) = name.split_once('.')
            && let Some(k) = self.wildcard.get(parent)
        {
            return k.clone();
        }
        self.default.clone()
    }
}

fn normalize_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

/// How a TLS listener verifies client certificates (`tls.client_auth`).
pub struct ClientVerification {
    pub mode: ClientAuth,
    pub roots: RootCertStore,
    /// Revocation lists (`crls`); none: no revocation check.
    pub crls: Vec<CertificateRevocationListDer<'static>>,
}

/// The server config of one TLS listener.
pub fn server_config(
    resolver: SniResolver,
    client_auth: Option<ClientVerification>,
) -> Result<ServerConfig, String> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| format!("TLS versions: {e}"))?;
    let asks_for_certificates = client_auth.is_some();
    let builder = match client_auth {
        None => builder.with_no_client_auth(),
        Some(ClientVerification { mode, roots, crls }) => {
            let mut v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if !crls.is_empty() {
                // The client certificate itself is looked up (a CA's own
                // revocation goes with a new bundle); one whose issuer has
                // no CRL listed, or whose CRL is past its `nextUpdate`, is
                // refused, as OpenSSL (nginx's `ssl_crl`) does.
                v = v
                    .with_crls(crls)
                    .only_check_end_entity_revocation()
                    .enforce_revocation_expiration();
            }
            let v = match mode {
                ClientAuth::Required => v,
                ClientAuth::Optional => v.allow_unauthenticated(),
            };
            let verifier = v
                .build()
                .map_err(|e| format!("client_auth: cannot build the verifier: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder.with_cert_resolver(Arc::new(resolver));
    cfg.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    if asks_for_certificates {
        // A resumed session brings back the certificate of its first
        // handshake unchecked (expired or past its CRL's `nextUpdate`
        // since): every connection of such a listener verifies afresh.
        cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        cfg.send_tls13_tickets = 0;
    }
    Ok(cfg)
}

/// What a verified client certificate says, as routes match it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientCert {
    /// The subject's common name (empty if it has none).
    pub common_name: String,
    /// The DNS names of the subject alternative name extension.
    pub dns_names: Vec<String>,
    /// Validity period, Unix seconds (`notBefore`, `notAfter`).
    pub not_before: u64,
    pub not_after: u64,
}

impl ClientCert {
    /// Reads the end-entity certificate rustls already verified; `None`
    /// if it cannot be parsed (then it counts as no certificate).
    pub fn from_der(der: &CertificateDer<'_>) -> Option<ClientCert> {
        let ee = webpki::EndEntityCert::try_from(der).ok()?;
        let (not_before, not_after) = validity(der)?;
        Some(ClientCert {
            common_name: common_name(ee.subject()).unwrap_or_default(),
            dns_names: ee.valid_dns_names().map(str::to_ascii_lowercase).collect(),
            not_before,
            not_after,
        })
    }

    /// Whether `now` (Unix seconds) is inside the validity period.
    pub fn valid_at(&self, now: u64) -> bool {
        (self.not_before..=self.not_after).contains(&now)
    }

    /// Whether one of `allowed` is this certificate's common name (exact)
    /// or one of its DNS names (case-insensitive).
    pub fn is_allowed(&self, allowed: &[String]) -> bool {
        allowed.iter().any(|a| {
            (!self.common_name.is_empty() && *a == self.common_name)
                || self.dns_names.iter().any(|d| d.eq_ignore_ascii_case(a))
        })
    }
}

/// The common name (OID 2.5.4.3) of a DER subject (the contents of the
/// Name SEQUENCE: SETs of SEQUENCE { OID, value }). The last CN wins, as
/// OpenSSL's `-nameopt` prints it most specific last; several are unusual.
fn common_name(subject: &[u8]) -> Option<String> {
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    let mut found = None;
    let mut rest = subject;
    while !rest.is_empty() {
        let (tag, set, after) = der_item(rest)?;
        rest = after;
        if tag != 0x31 {
            return None;
        }
        let mut attrs = set;
        while !attrs.is_empty() {
            let (tag, seq, after) = der_item(attrs)?;
            attrs = after;
            if tag != 0x30 {
                return None;
            }
            let (oid_tag, oid, value) = der_item(seq)?;
            let (_, v, _) = der_item(value)?;
            if oid_tag == 0x06 && oid == CN {
                found = Some(String::from_utf8_lossy(v).into_owned());
            }
        }
    }
    found
}

/// The validity period of a DER certificate, Unix seconds. Read here by
/// hand, as the common name is: webpki checks the period at the handshake
/// but does not expose it, and a full X.509 parser would be a new crate
/// tree for two fields. `Certificate ::= SEQUENCE { tbsCertificate
/// SEQUENCE { [0] version OPTIONAL, serialNumber, signature, issuer,
/// validity SEQUENCE { notBefore, notAfter }, … }, … }`.
fn validity(der: &[u8]) -> Option<(u64, u64)> {
    let (0x30, cert, _) = der_item(der)? else {
        return None;
    };
    let (0x30, tbs, _) = der_item(cert)? else {
        return None;
    };
    let mut rest = tbs;
    let (tag, _, after) = der_item(rest)?;
    if tag == 0xa0 {
        rest = after; // version
    }
    for _ in 0..3 {
        let (_, _, after) = der_item(rest)?; // serial, signature, issuer
        rest = after;
    }
    let (0x30, period, _) = der_item(rest)? else {
        return None;
    };
    let (t1, from, period) = der_item(period)?;
    let (t2, until, _) = der_item(period)?;
    Some((asn1_time(t1, from)?, asn1_time(t2, until)?))
}

/// An ASN.1 UTCTime (`YYMMDDHHMMSSZ`, years 1950–2049, RFC 5280 §4.1.2.5.1)
/// or GeneralizedTime (`YYYYMMDDHHMMSSZ`) as Unix seconds, a time before
/// 1970 as 0; `None` for any other form (RFC 5280 allows no other).
fn asn1_time(tag: u8, text: &[u8]) -> Option<u64> {
    let digits = |b: &[u8]| -> Option<u64> {
        b.iter().try_fold(0u64, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u64::from(c - b'0'))
        })
    };
    let (year, rest) = match (tag, text.len()) {
        (0x17, 13) => {
            let yy = digits(&text[..2])?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &text[2..])
        }
        (0x18, 15) => (digits(&text[..4])?, &text[4..]),
        _ => return None,
    };
    if rest.last() != Some(&b'Z') {
        return None;
    }
    let field = |i: usize| digits(&rest[i..i + 2]);
    let (month, day) = (field(0)?, field(2)?);
    let (h, m, s) = (field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's `days_from_civil`).
    let y = if month <= 2 {
        year.saturating_sub(1)
    } else {
        year
    };
    let era = y / 400;
    let yoe = y % 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let Some(days) = (era * 146_097 + doe).checked_sub(719_468) else {
        return Some(0);
    };
    Some(days * 86_400 + h * 3_600 + m * 60 + s)
}

/// One DER TLV: (tag, contents, rest).
fn der_item(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)?;
    let (len, head) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = head.checked_add(len)?;
    let contents = b.get(head..end)?;
    Some((tag, contents, &b[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asn1_times_read_as_unix_seconds() {
        let utc = |t: &str| asn1_time(0x17, t.as_bytes());
        let general = |t: &str| asn1_time(0x18, t.as_bytes());
        assert_eq!(utc("700101000000Z"), Some(0));
        assert_eq!(utc("491231235959Z"), Some(2_524_607_999));
        assert_eq!(utc("500101000000Z"), Some(0), "1950: before the epoch");
        assert_eq!(general("19691231235959Z"), Some(0));
        assert_eq!(general("20000229120000Z"), Some(951_825_600));
        assert_eq!(general("20261207120000Z"), Some(1_796_644_800));
        for bad in [
            "20261207120000",
            "2026120712000Z",
            "20261307120000Z",
            "20261200120000Z",
            "20261207240000Z",
            "2026120712000aZ",
        ] {
            assert_eq!(general(bad), None, "{bad}");
        }
        assert_eq!(asn1_time(0x04, b"700101000000Z"), None);
    }

    #[test]
    fn a_certificates_validity_is_read_from_its_der() {
        let mut params = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2024, 2, 29);
        params.not_after = rcgen::date_time_ymd(2051, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let c = ClientCert::from_der(cert.der()).unwrap();
        // 2051 is past UTCTime's range: a GeneralizedTime.
        assert_eq!((c.not_before, c.not_after), (1_709_164_800, 2_556_144_000));
        assert!(c.valid_at(1_709_164_800) && c.valid_at(2_556_144_000));
        assert!(!c.valid_at(1_709_164_799) && !c.valid_at(2_556_144_001));
        assert_eq!(validity(&cert.der()[..40]), None);
    }

    #[test]
    fn only_tls12_and_tls13_are_offered() {
        let versions: Vec<_> = VERSIONS.iter().map(|v| v.version).collect();
        assert_eq!(
            versions,
            [
                rustls::ProtocolVersion::TLSv1_3,
                rustls::ProtocolVersion::TLSv1_2
            ]
        );
        // The built config enables exactly those.
        let cfg = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .unwrap();
        let _ = cfg;
        for v in [
            rustls::ProtocolVersion::SSLv3,
            rustls::ProtocolVersion::TLSv1_0,
            rustls::ProtocolVersion::TLSv1_1,
        ] {
            assert!(!versions.contains(&v), "{v:?} offered");
        }
    }

    #[test]
    fn common_name_is_read_from_a_der_subject() {
        // SET { SEQ { OID 2.5.4.6, PrintableString "DE" } },
        // SET { SEQ { OID 2.5.4.3, UTF8String "ops-console" } }
        let mut subject = vec![
            0x31, 0x0b, 0x30, 0x09, 0x06, 0x03, 0x55, 0x04, 0x06, 0x13, 0x02,
        ];
        subject.extend_from_slice(b"DE");
        subject.extend_from_slice(&[
            0x31, 0x14, 0x30, 0x12, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x0b,
        ]);
        subject.extend_from_slice(b"ops-console");
        assert_eq!(common_name(&subject).as_deref(), Some("ops-console"));
        assert_eq!(common_name(&subject[..5]), None);
        assert_eq!(common_name(&[]), None);
    }

    #[test]
    fn client_cert_allow_list_matches_cn_exactly_and_dns_names_in_any_case() {
        let c = ClientCert {
            common_name: "Ops".into(),
            dns_names: vec!["batch.example".into()],
            ..Default::default()
        };
        assert!(c.is_allowed(&["Ops".into()]));
        assert!(!c.is_allowed(&["ops".into()]));
        assert!(c.is_allowed(&["BATCH.example".into()]));
        assert!(!c.is_allowed(&["other".into()]));
        let none = ClientCert::default();
        assert!(!none.is_allowed(&["".into()]));
    }
}
