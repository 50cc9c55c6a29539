//! Who is calling: a token as `Authorization: Bearer TOKEN`, or as the password of HTTP basic
//! authentication (what git sends), checked against the metadata store's token records.

use axum::http::{header, HeaderMap};
use base64::Engine;
use wharf_proto::{ApiError, Directory, Principal};

/// The token in the request's `Authorization` header, if any.
fn token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (_user, password) = decoded.split_once(':')?;
        return Some(password.to_owned());
    }
    None
}

/// The caller, who must present a valid token.
pub fn require(directory: &dyn Directory, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let token = token(headers).ok_or_else(|| ApiError::Unauthorized {
        reason: "send a token as 'Authorization: Bearer TOKEN' or as the basic-auth password".into(),
    })?;
    directory.authenticate(&token).ok_or_else(|| ApiError::Unauthorized {
        reason: "the token is not valid".into(),
    })
}

/// The caller if a token was sent, or an anonymous reader; a wrong token is still refused.
pub fn optional(
    directory: &dyn Directory,
    headers: &HeaderMap,
) -> Result<Option<Principal>, ApiError> {
    if headers.contains_key(header::AUTHORIZATION) {
        require(directory, headers).map(Some)
    } else {
        Ok(None)
    }
}
