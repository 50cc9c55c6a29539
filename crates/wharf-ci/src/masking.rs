//! The masking of a repository's secrets in everything a job shows: its output stream, its
//! test report and its error messages.
//!
//! Each secret is looked for as it is and in the encodings a script is likely to print it in
//! (base64, URL-safe base64, percent-encoding); a secret of several lines is also looked for
//! with CRLF line ends and line by line (lines of 8 bytes or more), so that printing one line
//! of a key does not show it. Every byte covered by an occurrence is masked, occurrences that
//! overlap or touch becoming one `[MASKED]`: a secret containing another is masked whole, and
//! of two secrets that overlap in the text neither leaks a part.
//!
//! A stream ([`MaskedStream`]) is masked across chunk boundaries and line breaks: it holds back
//! the last bytes of what it was given (one byte fewer than the longest pattern) until more
//! comes or the stream ends, since they may begin a secret.

use std::fmt;
use std::ops::Range;

use aho_corasick::AhoCorasick;
use base64::Engine;

/// What a secret is replaced with.
const MASK: &[u8] = b"[MASKED]";

/// The shortest line of a multi-line secret that is masked on its own: shorter lines (`-----`,
/// `}`) are too common to hide everywhere they occur.
const MIN_LINE_PATTERN: usize = 8;

/// Replaces a repository's secrets with `[MASKED]`; see the module's doc.
#[derive(Clone, Default)]
pub struct SecretMasker {
    /// The secrets and their encodings; `None` when there are no secrets.
    matcher: Option<AhoCorasick>,
    /// How many secrets (not patterns) it masks.
    secrets: usize,
    /// The longest pattern, in bytes.
    longest: usize,
}

impl SecretMasker {
    /// A masker for `secrets`; empty ones are ignored, as they would match everywhere.
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        let mut distinct: Vec<String> = secrets.into_iter().filter(|secret| !secret.is_empty()).collect();
        distinct.sort();
        distinct.dedup();
        let mut patterns: Vec<Vec<u8>> = distinct.iter().flat_map(|secret| forms(secret)).collect();
        patterns.sort();
        patterns.dedup();
        let longest = patterns.iter().map(Vec::len).max().unwrap_or(0);
        let matcher = (!patterns.is_empty()).then(|| {
            // Standard match semantics: the only ones that find overlapping occurrences.
            AhoCorasick::new(&patterns).expect("a few secrets always build an automaton")
        });
        SecretMasker {
            matcher,
            secrets: distinct.len(),
            longest,
        }
    }

    /// `text` with every secret masked.
    pub fn mask(&self, text: &str) -> String {
        String::from_utf8_lossy(&self.mask_bytes(text.as_bytes())).into_owned()
    }

    /// `bytes` with every secret masked.
    pub fn mask_bytes(&self, bytes: &[u8]) -> Vec<u8> {
        let ranges = self.occurrences(bytes);
        masked(bytes, &ranges)
    }

    /// A stream masked across its chunks.
    pub fn stream(&self) -> MaskedStream<'_> {
        MaskedStream {
            masker: self,
            pending: Vec::new(),
        }
    }

    /// The merged byte ranges of every occurrence of every pattern in `bytes`, overlapping
    /// ones included (in "aaa", "aa" is found at 0 and at 1).
    fn occurrences(&self, bytes: &[u8]) -> Vec<Range<usize>> {
        let Some(matcher) = &self.matcher else { return Vec::new() };
        merge(matcher.find_overlapping_iter(bytes).map(|found| found.range()).collect())
    }
}

/// Secrets are not printed, even in a debug dump of a job's settings.
impl fmt::Debug for SecretMasker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretMasker").field("secrets", &self.secrets).finish()
    }
}

/// A job's output on its way to the log: bytes in, masked bytes out.
pub struct MaskedStream<'a> {
    masker: &'a SecretMasker,
    /// Bytes given but not yet returned: they may begin a secret.
    pending: Vec<u8>,
}

impl MaskedStream<'_> {
    /// Takes the next chunk; returns what can be shown of the stream so far.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(chunk);
        let ranges = self.masker.occurrences(&self.pending);
        // A pattern starting before `certain` would have ended within the pending bytes, so
        // every occurrence starting there was found; later bytes may begin one still coming.
        let certain = self.pending.len().saturating_sub(self.masker.longest.saturating_sub(1));
        let mut cut = certain;
        for range in &ranges {
            if range.start < cut {
                cut = cut.max(range.end);
            }
        }
        let shown: Vec<Range<usize>> = ranges.into_iter().filter(|range| range.start < cut).collect();
        let out = masked(&self.pending[..cut], &shown);
        self.pending.drain(..cut);
        out
    }

    /// Ends the stream; returns the rest, masked.
    pub fn finish(self) -> Vec<u8> {
        self.masker.mask_bytes(&self.pending)
    }
}

/// The patterns that stand for `secret`: itself and its common encodings.
fn forms(secret: &str) -> Vec<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
    let bytes = secret.as_bytes();
    let mut forms = vec![bytes.to_vec()];
    forms.push(STANDARD.encode(bytes).into_bytes());
    forms.push(URL_SAFE.encode(bytes).into_bytes());
    forms.push(URL_SAFE_NO_PAD.encode(bytes).into_bytes());
    forms.push(percent_encoding::utf8_percent_encode(secret, percent_encoding::NON_ALPHANUMERIC).to_string().into_bytes());
    if secret.contains('\n') {
        forms.push(secret.replace("\r\n", "\n").replace('\n', "\r\n").into_bytes());
        for line in secret.lines().map(str::trim_end) {
            if line.len() >= MIN_LINE_PATTERN {
                forms.push(line.as_bytes().to_vec());
            }
        }
    }
    forms
}

/// `bytes` with each of `ranges` (sorted, disjoint, within `bytes`) replaced by the mask.
fn masked(bytes: &[u8], ranges: &[Range<usize>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut copied = 0;
    for range in ranges {
        out.extend_from_slice(&bytes[copied..range.start]);
        out.extend_from_slice(MASK);
        copied = range.end;
    }
    out.extend_from_slice(&bytes[copied..]);
    out
}

/// `ranges` sorted, with those that overlap or touch joined into one.
fn merge(mut ranges: Vec<Range<usize>>) -> Vec<Range<usize>> {
    ranges.sort_by_key(|range| range.start);
    let mut merged: Vec<Range<usize>> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match merged.last_mut() {
            Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
            _ => merged.push(range),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_whole_even_when_they_overlap() {
        let masker = SecretMasker::new(["abc", "xabcx", "", "abc", "cdef"].map(String::from));
        assert_eq!(masker.mask("token=xabcx end"), "token=[MASKED] end", "the longer secret is masked whole");
        assert_eq!(masker.mask("abc and abc"), "[MASKED] and [MASKED]");
        assert_eq!(masker.mask("abcdef!"), "[MASKED]!", "overlapping secrets leave no part visible");
        assert_eq!(masker.mask("nothing here"), "nothing here");
        assert_eq!(masker.mask(""), "");
        assert_eq!(format!("{masker:?}"), "SecretMasker { secrets: 3 }", "no secret in a debug dump");

        let masker = SecretMasker::new(["aa".to_owned(), "MASK".to_owned()]);
        assert_eq!(masker.mask("aaa b"), "[MASKED] b", "overlapping occurrences of one secret");
        assert_eq!(masker.mask("MASK aa"), "[MASKED] [MASKED]", "a mask is never masked again");
        assert_eq!(SecretMasker::new(["pässwörd".to_owned()]).mask("é pässwörd é"), "é [MASKED] é");
        assert_eq!(SecretMasker::new(Vec::new()).mask("plain"), "plain");
    }

    #[test]
    fn common_encodings_of_a_secret_are_masked() {
        let masker = SecretMasker::new(["s3cret/value+1".to_owned()]);
        assert_eq!(masker.mask("b64 czNjcmV0L3ZhbHVlKzE="), "b64 [MASKED]");
        assert_eq!(masker.mask("url s3cret%2Fvalue%2B1&x"), "url [MASKED]&x");
        assert_eq!(masker.mask("urlsafe czNjcmV0L3ZhbHVlKzE"), "urlsafe [MASKED]");
    }

    #[test]
    fn a_multi_line_secret_is_masked_whole_and_line_by_line() {
        let key = "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0B\n-----END KEY-----".to_owned();
        let masker = SecretMasker::new([key.clone()]);
        assert_eq!(masker.mask(&format!("key:\n{key}\nend")), "key:\n[MASKED]\nend");
        assert_eq!(masker.mask("line MIIEvQIBADANBgkqhkiG9w0B only"), "line [MASKED] only");
        assert_eq!(masker.mask(&key.replace('\n', "\r\n")), "[MASKED]");
    }

    #[test]
    fn a_stream_is_masked_across_every_chunk_boundary() {
        let secret = "multi\nline-secret".to_owned();
        let masker = SecretMasker::new([secret.clone(), "short".to_owned()]);
        let text = format!("before {secret} middle short after {secret}");
        let expected = masker.mask(&text);
        assert!(!expected.contains("line-secret") && !expected.contains("short"), "{expected}");
        for split in 1..=text.len() {
            let mut stream = masker.stream();
            let mut out = Vec::new();
            for chunk in text.as_bytes().chunks(split) {
                out.extend(stream.push(chunk));
            }
            out.extend(stream.finish());
            assert_eq!(String::from_utf8(out).unwrap(), expected, "chunks of {split} bytes");
        }
    }

    #[test]
    fn a_stream_without_secrets_holds_nothing_back() {
        let masker = SecretMasker::new(Vec::new());
        let mut stream = masker.stream();
        assert_eq!(stream.push(b"partial line"), b"partial line");
    }
}
