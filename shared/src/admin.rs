//! The admin routes' key: `Authorization: Bearer <admin_api_key>`, compared in constant time; the routes
//! do not exist (404) while the variable is empty.

use sha2::{Digest, Sha256};

use crate::config;
use crate::ports::Variables;
use crate::problem::Error;
use crate::web::{self, Request};

pub fn require_admin(vars: &impl Variables, req: &Request) -> Result<(), Error> {
    let Some(expected) = config::optional(vars, "admin_api_key")? else {
        return Err(Error::NotFound(
            "admin routes are disabled: set the `admin_api_key` variable to enable them".into(),
        ));
    };
    let given = web::bearer(req).ok_or_else(|| {
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

    fn req(auth: Option<&str>) -> Request {
        let mut b = http::Request::get("/bluebutton/connect/outbox");
        if let Some(a) = auth {
            b = b.header("Authorization", a);
        }
        b.body(Vec::new()).unwrap()
    }

    #[test]
    fn disabled_without_key_then_checked() {
        let p = FakePlatform::new().with_var("admin_api_key", "");
        assert_eq!(
            require_admin(&p, &req(Some("Bearer x")))
                .unwrap_err()
                .status(),
            404
        );
        let p = p.with_var("admin_api_key", "s3cret-admin");
        assert_eq!(require_admin(&p, &req(None)).unwrap_err().status(), 401);
        assert_eq!(
            require_admin(&p, &req(Some("Bearer s3cret")))
                .unwrap_err()
                .status(),
            401
        );
        assert!(require_admin(&p, &req(Some("Bearer s3cret-admin"))).is_ok());
    }
}
