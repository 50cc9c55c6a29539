//! The cluster cookie: the shared secret every member presents.
//!
//! Whoever has it can join the cluster (and is issued a certificate), so it is a full-admin
//! credential. [`Cookie::new`] refuses the values that must never protect a cluster: the
//! examples Wharf once shipped and anything shorter than [`MIN_COOKIE_CHARS`]. The value never
//! appears in `Debug` output.

use std::fmt;

/// The shortest cookie accepted, in characters. `openssl rand -hex 32` gives 64.
pub const MIN_COOKIE_CHARS: usize = 16;

/// How to make a cookie, for messages.
pub const MAKE_ONE: &str = "make one with `openssl rand -hex 32` and give every process of the cluster the same \
     value through WHARF_COOKIE or --cookie-file FILE";

/// Values that appeared in Wharf's examples and shipped configs: public, so never a secret.
const KNOWN_DEFAULTS: &[&str] = &["change-me", "changeme", "some-shared-secret", "some-secret", "test-cookie", "cookie", "secret"];

/// A cluster cookie that passed the strength check.
#[derive(Clone, PartialEq, Eq)]
pub struct Cookie(String);

/// Why a cookie was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WeakCookie {
    /// It is one of the example values.
    #[error("the cluster cookie is a published example value; {MAKE_ONE}")]
    Default,
    /// It is too short.
    #[error("the cluster cookie has {chars} characters, fewer than {MIN_COOKIE_CHARS}; {MAKE_ONE}")]
    TooShort {
        /// Its length.
        chars: usize,
    },
}

impl Cookie {
    /// Checks `value` (surrounding whitespace, such as a cookie file's newline, is dropped).
    pub fn new(value: &str) -> Result<Cookie, WeakCookie> {
        let value = value.trim();
        if KNOWN_DEFAULTS.iter().any(|known| known.eq_ignore_ascii_case(value)) {
            return Err(WeakCookie::Default);
        }
        let chars = value.chars().count();
        if chars < MIN_COOKIE_CHARS {
            return Err(WeakCookie::TooShort { chars });
        }
        Ok(Cookie(value.to_owned()))
    }

    /// The secret, for the handshakes that prove it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Cookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cookie(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_and_default_cookies_are_refused_with_how_to_make_one() {
        assert_eq!(Cookie::new("change-me"), Err(WeakCookie::Default));
        assert_eq!(Cookie::new(" Change-Me\n"), Err(WeakCookie::Default));
        assert_eq!(Cookie::new("short"), Err(WeakCookie::TooShort { chars: 5 }));
        assert_eq!(Cookie::new("0123456789abcde"), Err(WeakCookie::TooShort { chars: 15 }));
        let message = Cookie::new("x").unwrap_err().to_string();
        assert!(message.contains("openssl rand -hex 32"), "{message}");
    }

    #[test]
    fn a_strong_cookie_is_kept_without_its_newline_and_never_printed() {
        let cookie = Cookie::new("0123456789abcdef0123\n").unwrap();
        assert_eq!(cookie.expose(), "0123456789abcdef0123");
        assert!(!format!("{cookie:?}").contains("0123"));
    }
}
