//! The log of a sandboxed program (a job's script, an instance's process): its output copied
//! from a pipe into a file on this node, with the repository's secrets masked across the
//! whole stream and a cap on its size.
//!
//! Past the cap (`log_limit_bytes`, 4 MiB by default) one "log truncated" line is written and
//! the rest of the output is read and dropped, so the program never blocks on a full pipe.
//! Wharf's own lines (how the job started and ended) are always written, masked too: they are
//! few, and they say what became of the job.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use wharf_ci::SecretMasker;

/// The size of one read from the program's output.
const READ_CHUNK: usize = 64 * 1024;

/// A log file with a cap; cheap to clone (the clones share the file and the count).
#[derive(Clone)]
pub(crate) struct CappedLog {
    inner: Arc<Inner>,
}

struct Inner {
    file: Mutex<Written>,
    limit: u64,
    /// Set once the secrets are known: every line and the output are masked from then on.
    masker: OnceLock<SecretMasker>,
}

struct Written {
    file: Option<std::fs::File>,
    /// Bytes of the program's output written so far.
    output: u64,
    truncated: bool,
}

impl CappedLog {
    /// Creates (or empties) the log at `path`, keeping at most `limit` bytes of output. A log
    /// that cannot be created is reported once and then written nowhere: the program still runs.
    pub fn create(path: &Path, limit: u64) -> CappedLog {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let file = std::fs::File::create(path)
            .inspect_err(|error| tracing::error!(path = %path.display(), %error, "cannot create a log"))
            .ok();
        CappedLog {
            inner: Arc::new(Inner {
                file: Mutex::new(Written {
                    file,
                    output: 0,
                    truncated: false,
                }),
                limit,
                masker: OnceLock::new(),
            }),
        }
    }

    /// Masks `masker`'s secrets in everything written from now on.
    pub fn mask_with(&self, masker: SecretMasker) {
        let _ = self.inner.masker.set(masker);
    }

    /// Writes one line of Wharf's own, past the cap too.
    pub fn line(&self, text: &str) {
        let text = match self.inner.masker.get() {
            Some(masker) => masker.mask(text),
            None => text.to_owned(),
        };
        let mut written = self.lock();
        if let Some(file) = written.file.as_mut() {
            let _ = writeln!(file, "{text}");
        }
    }

    /// Copies `reader` (the program's output) into the log until it ends: on a blocking
    /// thread, as the pipe is a plain file descriptor.
    pub fn copy_from(&self, reader: impl Read + Send + 'static) -> tokio::task::JoinHandle<()> {
        let log = self.clone();
        tokio::task::spawn_blocking(move || log.copy_blocking(reader))
    }

    fn copy_blocking(&self, mut reader: impl Read) {
        let none = SecretMasker::default();
        let masker = self.inner.masker.get().unwrap_or(&none);
        let mut stream = masker.stream();
        let mut buffer = vec![0; READ_CHUNK];
        loop {
            match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => {
                    let shown = stream.push(&buffer[..read]);
                    self.output(&shown);
                }
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        self.output(&stream.finish());
    }

    /// Writes output, up to the cap; the first byte past it writes the truncation line.
    fn output(&self, bytes: &[u8]) {
        let limit = self.inner.limit;
        let mut written = self.lock();
        if written.truncated || bytes.is_empty() {
            return;
        }
        let room = limit.saturating_sub(written.output);
        let kept = &bytes[..bytes.len().min(room as usize)];
        let over = kept.len() < bytes.len();
        written.output += kept.len() as u64;
        written.truncated = over;
        if let Some(file) = written.file.as_mut() {
            let _ = file.write_all(kept);
            if over {
                let _ = writeln!(
                    file,
                    "\nwharf: the log was truncated at {} bytes (the node's log limit); the rest of the output was dropped",
                    limit
                );
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Written> {
        self.inner.file.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_past_the_cap_is_dropped_after_one_line_and_secrets_are_masked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.log");
        let log = CappedLog::create(&path, 20);
        log.mask_with(SecretMasker::new(["hunter2".to_owned()]));
        log.line("wharf: starting with hunter2");
        let output: &[u8] = b"0123456789 hunter2 0123456789 and much more";
        log.copy_from(output).await.unwrap();
        log.line("wharf: the job failed");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "wharf: starting with [MASKED]\n0123456789 [MASKED] \nwharf: the log was truncated at 20 bytes (the node's log limit); \
             the rest of the output was dropped\nwharf: the job failed\n"
        );
    }
}
