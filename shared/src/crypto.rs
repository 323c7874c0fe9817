//! Secrets at rest. Everything the app stores is sealed with XChaCha20-Poly1305 under `token_key`: a
//! fresh random nonce per write, and the record's key as associated data so a sealed value cannot be
//! moved to another record. Names that would reveal who a record is about (a patient id, a resource
//! id) become keyed hashes under a second key derived from the same secret.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::ports::{Random, Variables};

/// The keys derived from the `token_key` variable: 32 bytes, given as base64 (standard or URL-safe) or
/// hex.
#[derive(Clone)]
pub struct TokenKey {
    cipher: XChaCha20Poly1305,
    /// Identifies the key (not secret), so a rotated key is recognised instead of failing obscurely.
    id: [u8; 4],
    /// For keyed hashes of names; derived, so it is never the sealing key itself.
    names: [u8; 32],
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenKey({})", hex(&self.id))
    }
}

/// The layout of a sealed value: a version byte, the key id, the nonce, then the ciphertext.
const VERSION: u8 = 1;
const HEADER: usize = 1 + 4 + 24;

impl TokenKey {
    pub fn load(vars: &impl Variables) -> Result<TokenKey, Error> {
        let text = crate::config::required(vars, "token_key")?;
        TokenKey::parse(text.trim())
    }

    pub fn parse(text: &str) -> Result<TokenKey, Error> {
        let bytes = decode_key(text).ok_or_else(|| {
            Error::Config(
                "`token_key` must decode to a 256-bit key: 32 bytes as base64 or 64 hex digits \
                 (e.g. from `openssl rand -base64 32`)"
                    .into(),
            )
        })?;
        let digest = Sha256::digest(&bytes);
        let mut names =
            <Hmac<Sha256> as Mac>::new_from_slice(&bytes).expect("HMAC takes any key length");
        names.update(b"bluebutton-spin key names");
        Ok(TokenKey {
            cipher: XChaCha20Poly1305::new(bytes.as_slice().into()),
            id: digest[..4].try_into().expect("4 bytes"),
            names: names.finalize().into_bytes().into(),
        })
    }

    /// Seals `plaintext` for the record at `aad`.
    pub fn seal(&self, random: &impl Random, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 24];
        random.fill(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory sizes");
        let mut sealed = Vec::with_capacity(HEADER + ciphertext.len());
        sealed.push(VERSION);
        sealed.extend_from_slice(&self.id);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        sealed
    }

    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < HEADER || sealed[0] != VERSION {
            return Err(OpenError::Tampered);
        }
        if sealed[1..5] != self.id {
            return Err(OpenError::OtherKey);
        }
        self.cipher
            .decrypt(
                XNonce::from_slice(&sealed[5..HEADER]),
                Payload {
                    msg: &sealed[HEADER..],
                    aad,
                },
            )
            .map_err(|_| OpenError::Tampered)
    }

    /// A keyed hash of `name` within `kind` (32 hex digits): a stable key part that reveals nothing.
    pub fn hide(&self, kind: &str, name: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.names).expect("a 32-byte key");
        mac.update(kind.as_bytes());
        mac.update(b"\0");
        mac.update(name.as_bytes());
        hex(&mac.finalize().into_bytes()[..16])
    }
}

/// How many bytes sealing adds.
pub const SEAL_OVERHEAD: usize = HEADER + 16;

/// Why a sealed value did not open.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum OpenError {
    #[error("it was sealed under another `token_key`")]
    OtherKey,
    #[error("it failed its integrity check")]
    Tampered,
}

fn decode_key(text: &str) -> Option<Vec<u8>> {
    let candidates = [
        STANDARD.decode(text).ok(),
        URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok(),
        (text.len() == 64)
            .then(|| {
                (0..32)
                    .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
                    .collect::<Option<Vec<u8>>>()
            })
            .flatten(),
    ];
    candidates.into_iter().flatten().find(|k| k.len() == 32)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakePlatform;

    const KEY_B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn round_trip_and_fresh_nonces() {
        let p = FakePlatform::new();
        let key = TokenKey::parse(KEY_B64).unwrap();
        let a = key.seal(&p, b"secret token", b"session:1");
        let b = key.seal(&p, b"secret token", b"session:1");
        assert_ne!(a, b);
        assert_eq!(a.len(), b"secret token".len() + SEAL_OVERHEAD);
        assert_eq!(key.open(&a, b"session:1").unwrap(), b"secret token");
        assert!(!a.windows(6).any(|w| w == b"secret"));
    }

    #[test]
    fn tampering_moving_or_another_key_is_detected() {
        let p = FakePlatform::new();
        let key = TokenKey::parse(KEY_B64).unwrap();
        let sealed = key.seal(&p, b"secret token", b"session:1");
        assert_eq!(
            key.open(&sealed, b"session:2"),
            Err(OpenError::Tampered),
            "bound to its record"
        );
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(key.open(&flipped, b"session:1"), Err(OpenError::Tampered));
        assert_eq!(
            key.open(&sealed[..10], b"session:1"),
            Err(OpenError::Tampered)
        );
        let other = TokenKey::parse(&"11".repeat(32)).unwrap();
        assert_eq!(other.open(&sealed, b"session:1"), Err(OpenError::OtherKey));
    }

    #[test]
    fn hidden_names_are_stable_per_kind_and_key() {
        let key = TokenKey::parse(KEY_B64).unwrap();
        let other = TokenKey::parse(&"11".repeat(32)).unwrap();
        let a = key.hide("patient", "-20140000010000");
        assert_eq!(a.len(), 32);
        assert_eq!(a, key.hide("patient", "-20140000010000"));
        assert_ne!(a, key.hide("cursor", "-20140000010000"));
        assert_ne!(a, other.hide("patient", "-20140000010000"));
        assert!(!a.contains("2014"));
    }

    #[test]
    fn keys_must_be_256_bits() {
        assert!(TokenKey::parse(&"ab".repeat(32)).is_ok());
        assert!(TokenKey::parse(KEY_B64.trim_end_matches('=')).is_ok());
        let err = TokenKey::parse("c2hvcnQ=").unwrap_err();
        assert!(matches!(err, Error::Config(_)));
        assert!(err.to_string().contains("token_key"));
        assert!(TokenKey::parse("").is_err());
    }
}
