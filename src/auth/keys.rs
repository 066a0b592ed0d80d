//! Verification keys of one issuer: PEM files, a JWKS file and an HMAC
//! secret file, loaded once at config build time.
//!
//! Owns key loading and key *selection* (by `kid` and algorithm family).
//! It never chooses an algorithm: the issuer's allow-list does that, and a
//! key is only ever used with an algorithm of its own family, which is what
//! defeats RS/HS confusion (a public key can never become an HMAC secret).

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{AlgorithmFamily, DecodingKey};

/// HMAC secrets shorter than this are refused (RFC 7518 §3.2: a key of the
/// same size as the hash output, 256 bits for HS256).
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

/// One verification key.
pub struct Key {
    pub kid: Option<String>,
    pub family: AlgorithmFamily,
    pub key: DecodingKey,
    /// Where it came from, for `check` and `explain`.
    pub origin: String,
}

/// All keys of one issuer.
#[derive(Default)]
pub struct KeySet {
    pub keys: Vec<Key>,
}

/// Why a key could not be selected for a token.
#[derive(Debug, PartialEq, Eq)]
pub enum SelectError {
    UnknownKid,
    KidRequired,
    NoKeyForAlgorithm,
}

impl KeySet {
    /// Loads a PEM public key (RSA, EC or Ed25519; SPKI or PKCS#1 for RSA).
    pub fn add_pem(&mut self, pem: &[u8], kid: Option<String>, origin: &str) -> Result<(), String> {
        let text = std::str::from_utf8(pem).map_err(|_| format!("{origin}: not a PEM file"))?;
        if text.contains("PRIVATE KEY") {
            // A private key in the gateway's config is a deployment mistake:
            // the gateway only ever verifies.
            return Err(format!("{origin}: is a private key; give the public key"));
        }
        let (family, key) = if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
            (AlgorithmFamily::Rsa, k)
        } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
            (AlgorithmFamily::Ec, k)
        } else if let Ok(k) = DecodingKey::from_ed_pem(pem) {
            (AlgorithmFamily::Ed, k)
        } else {
            return Err(format!(
                "{origin}: not an RSA, EC or Ed25519 public key in PEM form"
            ));
        };
        self.keys.push(Key {
            kid,
            family,
            key,
            origin: origin.to_string(),
        });
        Ok(())
    }

    /// Loads every signing key of a JWKS document (`{"keys": [...]}`).
    /// Keys marked `"use": "enc"` and symmetric (`oct`) keys are refused:
    /// shared secrets belong in `hmac_secret_file`, not in a key set that is
    /// usually published.
    pub fn add_jwks(&mut self, json: &[u8], origin: &str) -> Result<(), String> {
        let set: JwkSet =
            serde_json::from_slice(json).map_err(|e| format!("{origin}: invalid JWKS: {e}"))?;
        if set.keys.is_empty() {
            return Err(format!("{origin}: JWKS has no keys"));
        }
        for (i, jwk) in set.keys.iter().enumerate() {
            if matches!(
                jwk.common.public_key_use,
                Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
            ) {
                continue;
            }
            let family = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa,
                AlgorithmParameters::EllipticCurve(_) => AlgorithmFamily::Ec,
                AlgorithmParameters::OctetKeyPair(_) => AlgorithmFamily::Ed,
                _ => {
                    return Err(format!(
                        "{origin}: key {i} is symmetric (oct) or of an unknown type; HMAC secrets go in hmac_secret_file"
                    ));
                }
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("{origin}: key {i}: {e}"))?;
            self.keys.push(Key {
                kid: jwk.common.key_id.clone(),
                family,
                key,
                origin: format!("{origin}#{i}"),
            });
        }
        Ok(())
    }

    /// Adds an HMAC secret: the file's bytes with surrounding whitespace
    /// trimmed. A `kid` makes it selectable by tokens naming it (identity
    /// providers such as Keycloak put a `kid` in HS256 tokens, and several
    /// secrets per issuer allow rotation).
    pub fn add_hmac(
        &mut self,
        secret: &[u8],
        kid: Option<String>,
        origin: &str,
    ) -> Result<(), String> {
        let secret = secret.trim_ascii();
        if secret.len() < MIN_HMAC_SECRET_BYTES {
            return Err(format!(
                "{origin}: HMAC secret has {} bytes, at least {MIN_HMAC_SECRET_BYTES} are required",
                secret.len()
            ));
        }
        self.keys.push(Key {
            kid,
            family: AlgorithmFamily::Hmac,
            key: DecodingKey::from_secret(secret),
            origin: origin.to_string(),
        });
        Ok(())
    }

    /// Picks the key for a token of algorithm family `family` and header
    /// `kid`. A kid must name a key of that family; without a kid there must
    /// be exactly one key of that family (guessing among several would turn
    /// one failed verification into several tries).
    pub fn select(&self, family: AlgorithmFamily, kid: Option<&str>) -> Result<&Key, SelectError> {
        match kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|k| k.family == family && k.kid.as_deref() == Some(kid))
                .ok_or(SelectError::UnknownKid),
            None => {
                let mut it = self.keys.iter().filter(|k| k.family == family);
                match (it.next(), it.next()) {
                    (Some(k), None) => Ok(k),
                    (Some(_), Some(_)) => Err(SelectError::KidRequired),
                    (None, _) => Err(SelectError::NoKeyForAlgorithm),
                }
            }
        }
    }

    /// A `kid` given to two keys of one family (selection would be
    /// ambiguous), if any.
    pub fn duplicate_kid(&self) -> Option<&str> {
        self.keys.iter().enumerate().find_map(|(i, a)| {
            let kid = a.kid.as_deref()?;
            self.keys[..i]
                .iter()
                .any(|b| b.family == a.family && b.kid.as_deref() == Some(kid))
                .then_some(kid)
        })
    }

    pub fn has_family(&self, family: AlgorithmFamily) -> bool {
        self.keys.iter().any(|k| k.family == family)
    }
}
