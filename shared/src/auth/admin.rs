//! The admin routes' key: `Authorization: Bearer <admin_api_key>`, compared in constant time; the routes
//! do not exist (404) while the variable is empty.

use sha2::{Digest, Sha256};

use crate::config;
use crate::error::Error;
use crate::ports::Variables;

/// Checks the bearer value a request carried against the `admin_api_key` variable.
pub fn require_admin(vars: &impl Variables, bearer: Option<&str>) -> Result<(), Error> {
    let Some(expected) = config::optional(vars, "admin_api_key")? else {
        return Err(Error::NotFound(
            "admin routes are disabled: set the `admin_api_key` variable to enable them".into(),
        ));
    };
    let given = bearer.ok_or_else(|| {
        Error::Unauthorized("send the admin key as `Authorization: Bearer <admin_api_key>`".into())
    })?;
    if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(Error::Unauthorized("wrong admin key".into()))
    }
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
    fn disabled_without_key_then_checked() {
        let p = FakePlatform::new().with_var("admin_api_key", "");
        let status = |r: Result<(), Error>| r.unwrap_err();
        assert!(matches!(
            status(require_admin(&p, Some("x"))),
            Error::NotFound(_)
        ));
        let p = p.with_var("admin_api_key", "s3cret-admin");
        assert!(matches!(
            status(require_admin(&p, None)),
            Error::Unauthorized(_)
        ));
        assert!(matches!(
            status(require_admin(&p, Some("s3cret"))),
            Error::Unauthorized(_)
        ));
        assert!(require_admin(&p, Some("s3cret-admin")).is_ok());
    }
}
