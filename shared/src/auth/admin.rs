//! The admin routes' key: `Authorization: Bearer <admin_api_key>`, compared in constant time. The routes
//! do not exist (404) while the variable is empty, too short to resist guessing, or a placeholder left
//! from an example file.

use sha2::{Digest, Sha256};

use crate::config;
use crate::error::Error;
use crate::ports::Variables;

/// The shortest admin key accepted.
pub const MIN_ADMIN_KEY_CHARS: usize = 32;

/// The admin key when it is usable; else why the admin routes are off.
pub fn admin_key(vars: &impl Variables) -> Result<Result<String, &'static str>, Error> {
    let Some(key) = config::optional(vars, "admin_api_key")? else {
        return Ok(Err("unset: admin routes are disabled"));
    };
    let lower = key.to_ascii_lowercase();
    // Words of example files, `<your key>`, or `xxxx…`; none of these come out of a random generator
    // (base64 and hex have no `<`, and a 7-letter word is a 1-in-10^12 chance).
    let filler = key.chars().all(|c| key.starts_with(c));
    if filler
        || key.starts_with('<')
        || ["replace", "changeme", "change-me", "example", "placeholder"]
            .iter()
            .any(|p| lower.contains(p))
    {
        return Ok(Err(
            "a placeholder: admin routes are disabled until a real key is set",
        ));
    }
    if key.chars().count() < MIN_ADMIN_KEY_CHARS {
        return Ok(Err(
            "shorter than 32 characters: admin routes are disabled (use e.g. `openssl rand -base64 32`)",
        ));
    }
    Ok(Ok(key))
}

/// Checks the bearer value a request carried against the `admin_api_key` variable; answers the key's id
/// (what the audit trail names the operator by).
pub fn require_admin(vars: &impl Variables, bearer: Option<&str>) -> Result<String, Error> {
    let expected = admin_key(vars)?.map_err(|why| {
        Error::NotFound(format!(
            "admin routes are disabled: `admin_api_key` is {why}"
        ))
    })?;
    let given = bearer.ok_or_else(|| {
        Error::Unauthorized("send the admin key as `Authorization: Bearer <admin_api_key>`".into())
    })?;
    if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        Ok(key_id(&expected))
    } else {
        Err(Error::Unauthorized("wrong admin key".into()))
    }
}

/// The admin key's id when `bearer` is the admin key; `None` when it is not (or admin routes are off).
pub fn admin_bearer(vars: &impl Variables, bearer: Option<&str>) -> Result<Option<String>, Error> {
    let (Ok(expected), Some(given)) = (admin_key(vars)?, bearer) else {
        return Ok(None);
    };
    Ok(constant_time_eq(given.as_bytes(), expected.as_bytes()).then(|| key_id(&expected)))
}

/// The first 8 bytes of the key's SHA-256, in hex: tells keys apart after a rotation, reveals nothing of
/// a key with 192 bits or more.
pub fn key_id(key: &str) -> String {
    crate::crypto::hex(&Sha256::digest(key.as_bytes())[..8])
}

/// Hashing first makes the comparison independent of where the inputs differ, and of their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakePlatform;

    #[test]
    fn disabled_without_a_real_key_then_checked() {
        let status = |r: Result<String, Error>| r.unwrap_err();
        for weak in [
            "",
            "s3cret-admin",
            "REPLACE_WITH_A_LONG_RANDOM_ADMIN_KEY_0123456789",
            "<paste the output of openssl rand -base64 32>",
            "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        ] {
            let p = FakePlatform::new().with_var("admin_api_key", weak);
            assert!(
                matches!(status(require_admin(&p, Some(weak))), Error::NotFound(_)),
                "{weak:?} opens nothing"
            );
        }
        // Random keys may hold runs of a letter.
        let key = "k8Yq1bV3m0Rz5Lw2Tn9XXXs4Jd7Fg6Pc1Xa";
        let p = FakePlatform::new().with_var("admin_api_key", key);
        assert!(matches!(
            status(require_admin(&p, None)),
            Error::Unauthorized(_)
        ));
        assert!(matches!(
            status(require_admin(
                &p,
                Some("k8Yq1bV3m0Rz5Lw2Tn9XXXs4Jd7Fg6Pc1X")
            )),
            Error::Unauthorized(_)
        ));
        assert_eq!(require_admin(&p, Some(key)).unwrap(), key_id(key));
        assert_eq!(key_id(key).len(), 16);
        assert_eq!(admin_bearer(&p, Some(key)).unwrap(), Some(key_id(key)));
        assert_eq!(admin_bearer(&p, Some("nope")).unwrap(), None);
        assert_eq!(admin_bearer(&p, None).unwrap(), None);
    }
}
