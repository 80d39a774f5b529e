//! Bearer-token checks for admin endpoints.

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
