//! Who is calling: a token as `Authorization: Bearer TOKEN`, or as the password of HTTP basic
//! authentication (what git sends), checked against the metadata store's token records.
//!
//! Wharf's credentials never leave Wharf: [`strip_wharf_credentials`] removes them from a
//! request before the application router passes it to a deployed app.

use axum::http::{header, HeaderMap};
use base64::Engine;
use wharf_proto::{ApiError, Directory, Principal};

/// The name of Wharf's session cookie, for sign-in through the web pages. Nothing sets it yet;
/// the application router already keeps it from apps, so whatever sets it later is safe from
/// the start.
pub const SESSION_COOKIE: &str = "wharf_session";

/// Removes Wharf's credentials from the headers of a request bound for a deployed app:
/// `Authorization` when it carries a Wharf token (`is_wharf_token`; an app's own
/// `Authorization`, which is no Wharf token, passes), `Proxy-Authorization` (meant for this
/// hop), and the [`SESSION_COOKIE`] from every `Cookie` header (other cookies pass).
pub fn strip_wharf_credentials(headers: &mut HeaderMap, is_wharf_token: impl Fn(&str) -> bool) {
    if token(headers).is_some_and(|token| is_wharf_token(&token)) {
        headers.remove(header::AUTHORIZATION);
    }
    headers.remove(header::PROXY_AUTHORIZATION);
    let cookies: Vec<_> = headers.get_all(header::COOKIE).iter().cloned().collect();
    if cookies.is_empty() {
        return;
    }
    headers.remove(header::COOKIE);
    for cookie in cookies {
        let Ok(text) = cookie.to_str() else {
            // Not text: it cannot name the session cookie in a form Wharf would read.
            headers.append(header::COOKIE, cookie);
            continue;
        };
        let kept: Vec<&str> = text
            .split(';')
            .map(str::trim)
            .filter(|pair| !pair.is_empty())
            .filter(|pair| pair.split_once('=').map_or(*pair, |(name, _)| name).trim() != SESSION_COOKIE)
            .collect();
        if !kept.is_empty() {
            if let Ok(value) = axum::http::HeaderValue::from_str(&kept.join("; ")) {
                headers.append(header::COOKIE, value);
            }
        }
    }
}

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

#[cfg(test)]
mod tests {
    use axum::http::{header, HeaderMap, HeaderValue};
    use base64::Engine;

    use super::strip_wharf_credentials;

    fn stripped(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        strip_wharf_credentials(&mut headers, |token| token == "wharf-token");
        headers
    }

    #[test]
    fn wharf_tokens_and_the_session_cookie_never_reach_an_app() {
        let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("git:wharf-token"));
        for authorization in ["Bearer wharf-token", "bearer  wharf-token", basic.as_str()] {
            let headers = stripped(&[(header::AUTHORIZATION, authorization), (header::ACCEPT, "*/*")]);
            assert!(!headers.contains_key(header::AUTHORIZATION), "{authorization} was forwarded");
            assert_eq!(headers[header::ACCEPT], "*/*");
        }
        let own = stripped(&[(header::AUTHORIZATION, "Bearer the-apps-own"), (header::PROXY_AUTHORIZATION, "Basic eA==")]);
        assert_eq!(own[header::AUTHORIZATION], "Bearer the-apps-own", "an app's own credential passes");
        assert!(!own.contains_key(header::PROXY_AUTHORIZATION));

        let cookies = stripped(&[
            (header::COOKIE, "theme=dark; wharf_session=secret; lang=en"),
            (header::COOKIE, "wharf_session=again"),
            (header::COOKIE, " wharf_session = spaced ;cart=3"),
        ]);
        let kept: Vec<_> = cookies.get_all(header::COOKIE).iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(kept, ["theme=dark; lang=en", "cart=3"]);
    }
}
