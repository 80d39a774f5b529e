//! Bearer-token checks for admin endpoints, the same in every role: an unset
//! admin token disables them (403), a missing or wrong bearer token is
//! refused (401).

/// Why an admin request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminRefusal {
    /// No admin token is configured: admin endpoints are disabled.
    Disabled,
    /// The request's bearer token is missing or wrong.
    Unauthorized,
}

impl AdminRefusal {
    /// The HTTP status the refusal answers with.
    pub fn status(self) -> u16 {
        match self {
            AdminRefusal::Disabled => 403,
            AdminRefusal::Unauthorized => 401,
        }
    }

    /// What the refused caller is told.
    pub fn message(self) -> &'static str {
        match self {
            AdminRefusal::Disabled => {
                "admin endpoints are disabled: start this role with --admin-token (LAMBDA_ADMIN_TOKEN)"
            }
            AdminRefusal::Unauthorized => "a valid bearer token is required",
        }
    }
}

/// Checks an admin request's `Authorization` header against the role's
/// admin token.
pub fn authorize_admin(
    token: Option<&str>,
    authorization: Option<&str>,
) -> Result<(), AdminRefusal> {
    let token = token.ok_or(AdminRefusal::Disabled)?;
    if bearer_matches(token, authorization) {
        Ok(())
    } else {
        Err(AdminRefusal::Unauthorized)
    }
}

/// Whether an `Authorization` header value carries exactly `Bearer <expected>`.
/// The comparison takes the same time wherever the first difference is, so
/// response timing does not reveal how much of a guess was right.
pub fn bearer_matches(expected: &str, authorization: Option<&str>) -> bool {
    let Some(presented) = authorization.and_then(|h| h.strip_prefix("Bearer ")) else {
        return false;
    };
    constant_time_eq(expected.as_bytes(), presented.trim().as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= u64::from(x ^ y);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unset_token_disables_and_a_wrong_one_is_refused() {
        assert_eq!(
            authorize_admin(None, Some("Bearer x")),
            Err(AdminRefusal::Disabled)
        );
        assert_eq!(
            authorize_admin(Some("x"), None),
            Err(AdminRefusal::Unauthorized)
        );
        assert_eq!(
            authorize_admin(Some("x"), Some("Bearer y")),
            Err(AdminRefusal::Unauthorized)
        );
        assert_eq!(authorize_admin(Some("x"), Some("Bearer x")), Ok(()));
    }

    #[test]
    fn only_the_exact_bearer_token_matches() {
        assert!(bearer_matches("s3cret", Some("Bearer s3cret")));
        assert!(!bearer_matches("s3cret", Some("Bearer s3cre")));
        assert!(!bearer_matches("s3cret", Some("Bearer s3cret2")));
        assert!(!bearer_matches("s3cret", Some("Bearer S3cret")));
        assert!(!bearer_matches("s3cret", Some("Basic s3cret")));
        assert!(!bearer_matches("s3cret", Some("s3cret")));
        assert!(!bearer_matches("s3cret", None));
        assert!(!bearer_matches("s3cret", Some("Bearer ")));
    }
}
