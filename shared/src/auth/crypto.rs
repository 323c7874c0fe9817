//! Secrets at rest: sealed with XChaCha20-Poly1305 under `token_key`, a fresh random nonce per write, and the
//! record's key as associated data so a sealed value cannot be moved to another record.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::ports::{Random, Variables};

/// The AEAD key from the `token_key` variable: 32 bytes, given as base64 (standard or URL-safe) or hex.
#[derive(Clone)]
pub struct TokenKey {
    cipher: XChaCha20Poly1305,
    /// Identifies the key (not secret), so a rotated key is recognised instead of failing obscurely.
    id: String,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenKey({})", self.id)
    }
}

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
        let id = hex(&Sha256::digest(&bytes)[..4]);
        Ok(TokenKey {
            cipher: XChaCha20Poly1305::new(bytes.as_slice().into()),
            id,
        })
    }

    pub fn seal(&self, random: &impl Random, plaintext: &[u8], aad: &[u8]) -> Sealed {
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
        Sealed {
            kid: self.id.clone(),
            nonce: URL_SAFE_NO_PAD.encode(nonce),
            ciphertext: URL_SAFE_NO_PAD.encode(ciphertext),
        }
    }

    pub fn open(&self, sealed: &Sealed, aad: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.kid != self.id {
            return Err(OpenError::OtherKey);
        }
        let nonce = URL_SAFE_NO_PAD.decode(&sealed.nonce).ok();
        let ciphertext = URL_SAFE_NO_PAD.decode(&sealed.ciphertext).ok();
        let (Some(nonce), Some(ciphertext)) = (nonce, ciphertext) else {
            return Err(OpenError::Tampered);
        };
        if nonce.len() != 24 {
            return Err(OpenError::Tampered);
        }
        self.cipher
            .decrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad,
                },
            )
            .map_err(|_| OpenError::Tampered)
    }
}

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

/// A sealed value as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sealed {
    pub kid: String,
    pub nonce: String,
    pub ciphertext: String,
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
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
        assert_eq!(key.open(&a, b"session:1").unwrap(), b"secret token");
        assert!(!a.ciphertext.contains("secret"));
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
        let mut bytes = URL_SAFE_NO_PAD.decode(&flipped.ciphertext).unwrap();
        bytes[0] ^= 1;
        flipped.ciphertext = URL_SAFE_NO_PAD.encode(bytes);
        assert!(key.open(&flipped, b"session:1").is_err());
        let other = TokenKey::parse(&"11".repeat(32)).unwrap();
        assert_eq!(other.open(&sealed, b"session:1"), Err(OpenError::OtherKey));
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
