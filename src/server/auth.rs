//! Bearer tokens: read, write, admin (each from `HYBRIDSTORE_{KIND}_TOKEN` or the file that
//! `HYBRIDSTORE_{KIND}_TOKEN_FILE` names), compared in constant time.

use std::fmt;

use axum::http::{HeaderMap, StatusCode};
use subtle::ConstantTimeEq as _;

use super::problem::Problem;

/// What a request may do. Ordered: a higher access includes the lower ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Reads.
    Read,
    /// Reads and appends.
    Write,
    /// Everything, migration states included.
    Admin,
}

impl Access {
    fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Admin => "admin",
        }
    }
}

/// The configured tokens. `Debug` never shows them.
#[derive(Clone, Default)]
pub struct Tokens {
    read: Option<Vec<u8>>,
    write: Option<Vec<u8>>,
    admin: Option<Vec<u8>>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("read", &self.read.is_some())
            .field("write", &self.write.is_some())
            .field("admin", &self.admin.is_some())
            .finish()
    }
}

/// A token configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {reason}")]
pub struct TokenError {
    /// The variable.
    pub variable: String,
    /// What is wrong.
    pub reason: String,
}

impl Tokens {
    /// Tokens as given (`None`: that kind is not configured).
    pub fn new(read: Option<String>, write: Option<String>, admin: Option<String>) -> Tokens {
        let bytes = |t: Option<String>| t.map(String::into_bytes);
        Tokens {
            read: bytes(read),
            write: bytes(write),
            admin: bytes(admin),
        }
    }

    /// The tokens of the environment (`lookup` reads a variable).
    ///
    /// # Errors
    /// An empty token, both a token and its file, or a file that cannot be read.
    pub fn from_vars(lookup: impl Fn(&str) -> Option<String>) -> Result<Tokens, TokenError> {
        let one = |kind: &str| -> Result<Option<String>, TokenError> {
            let name = format!("HYBRIDSTORE_{kind}_TOKEN");
            let file_name = format!("{name}_FILE");
            let value = lookup(&name).filter(|v| !v.is_empty());
            let file = lookup(&file_name).filter(|v| !v.is_empty());
            let token = match (value, file) {
                (Some(_), Some(_)) => {
                    return Err(TokenError {
                        variable: name,
                        reason: format!("set both it and {file_name}; set one"),
                    })
                }
                (Some(value), None) => value,
                (None, Some(path)) => std::fs::read_to_string(&path)
                    .map_err(|e| TokenError {
                        variable: file_name.clone(),
                        reason: format!("cannot read {path}: {e}"),
                    })?
                    .trim()
                    .to_owned(),
                (None, None) => return Ok(None),
            };
            if token.len() < 16 {
                return Err(TokenError {
                    variable: name,
                    reason: "a token must have at least 16 characters".into(),
                });
            }
            Ok(Some(token))
        };
        Ok(Tokens::new(one("READ")?, one("WRITE")?, one("ADMIN")?))
    }

    /// Whether any token is configured (else the daemon serves everyone, on loopback or a Unix
    /// socket only).
    pub fn any(&self) -> bool {
        self.read.is_some() || self.write.is_some() || self.admin.is_some()
    }

    /// The access the request's bearer token grants.
    fn granted(&self, headers: &HeaderMap) -> Option<Access> {
        let presented = headers
            .get(axum::http::header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")?
            .trim()
            .as_bytes();
        let matches = |token: &Option<Vec<u8>>| {
            token
                .as_deref()
                .is_some_and(|t| bool::from(t.ct_eq(presented)))
        };
        // Every token is compared, whichever matches, so the time does not tell which kind a
        // guess came close to.
        let (admin, write, read) = (
            matches(&self.admin),
            matches(&self.write),
            matches(&self.read),
        );
        if admin {
            Some(Access::Admin)
        } else if write {
            Some(Access::Write)
        } else if read {
            Some(Access::Read)
        } else {
            None
        }
    }

    /// Checks that the request may do what needs `needed`.
    ///
    /// # Errors
    /// 401 without a known token, 403 with a token of a lower kind.
    pub fn check(&self, headers: &HeaderMap, needed: Access) -> Result<(), Problem> {
        if !self.any() {
            return Ok(());
        }
        match self.granted(headers) {
            None => Err(Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a bearer token is needed (Authorization: Bearer TOKEN)",
            )),
            Some(granted) if granted < needed => Err(Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "this needs the {} token; the {} token was given",
                    needed.as_str(),
                    granted.as_str()
                ),
            )),
            Some(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        headers
    }

    /// Proves each token grants its kind and the kinds below, an unknown token nothing, and no
    /// configured token lets everyone through.
    #[test]
    fn tokens_grant_their_kind() {
        let tokens = Tokens::new(
            Some("r".repeat(16)),
            Some("w".repeat(16)),
            Some("a".repeat(16)),
        );
        let read = headers(&"r".repeat(16));
        let write = headers(&"w".repeat(16));
        let admin = headers(&"a".repeat(16));
        assert!(tokens.check(&read, Access::Read).is_ok());
        assert_eq!(
            tokens.check(&read, Access::Write).unwrap_err().status,
            StatusCode::FORBIDDEN
        );
        assert!(tokens.check(&write, Access::Write).is_ok());
        assert_eq!(
            tokens.check(&write, Access::Admin).unwrap_err().status,
            StatusCode::FORBIDDEN
        );
        assert!(tokens.check(&admin, Access::Admin).is_ok());
        assert_eq!(
            tokens
                .check(&headers("nope-nope-nope-nope"), Access::Read)
                .unwrap_err()
                .status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            tokens
                .check(&HeaderMap::new(), Access::Read)
                .unwrap_err()
                .status,
            StatusCode::UNAUTHORIZED
        );
        assert!(Tokens::default()
            .check(&HeaderMap::new(), Access::Admin)
            .is_ok());
    }

    /// Proves the variables: a token or its file, not both; short tokens refused; Debug hides them.
    #[test]
    fn tokens_from_vars() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("admin");
        std::fs::write(&file, format!("{}\n", "x".repeat(20))).unwrap();
        let path = file.to_str().unwrap().to_owned();
        let tokens = Tokens::from_vars(|name| match name {
            "HYBRIDSTORE_ADMIN_TOKEN_FILE" => Some(path.clone()),
            "HYBRIDSTORE_READ_TOKEN" => Some("r".repeat(16)),
            _ => None,
        })
        .unwrap();
        assert!(tokens
            .check(&headers(&"x".repeat(20)), Access::Admin)
            .is_ok());
        assert!(!format!("{tokens:?}").contains("xxxx"));
        let both = Tokens::from_vars(|name| match name {
            "HYBRIDSTORE_WRITE_TOKEN" | "HYBRIDSTORE_WRITE_TOKEN_FILE" => Some("w".repeat(16)),
            _ => None,
        });
        assert!(both.is_err());
        let short =
            Tokens::from_vars(|name| (name == "HYBRIDSTORE_READ_TOKEN").then(|| "abc".into()));
        assert!(short.unwrap_err().to_string().contains("16 characters"));
        assert!(!Tokens::from_vars(|_| None).unwrap().any());
    }
}
