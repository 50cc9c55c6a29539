//! Wharf's own secrets in its environment: read once at start, then removed.
//!
//! A variable removed with `remove_var` is no longer inherited by child processes, but Linux
//! still shows the process's *initial* environment in `/proc/PID/environ`, read from the
//! memory the kernel laid it out in; a CI job running as the same user read the cookie there
//! (issue 14). So [`take`] also overwrites the value in that memory.

/// Returns the value of `name` and removes it from this process's environment, including the
/// copy `/proc/self/environ` shows. Call it first thing in `main`, while this process has a
/// single thread.
pub fn take(name: &str) -> Option<String> {
    let value = std::env::var(name).ok();
    if value.is_some() {
        // Call site of the crate's one `unsafe` block: see the function's safety comment.
        scrub_initial_environment(name);
        std::env::remove_var(name);
    }
    value
}

/// Overwrites with NULs the value of every `NAME=value` string of the C environment.
#[allow(unsafe_code)]
fn scrub_initial_environment(name: &str) {
    extern "C" {
        static environ: *const *mut std::ffi::c_char;
    }
    let prefix = format!("{name}=");
    // SAFETY: `take` runs before any other thread exists, so nothing reads or changes the
    // environment meanwhile. POSIX `environ` is a NULL-terminated array of pointers to
    // NUL-terminated strings, owned by this process and writable (the initial ones live on the
    // stack the kernel set up; later ones were allocated by libc). Only bytes strictly before
    // each string's terminating NUL are written, so every string stays NUL-terminated, and the
    // byte slice read from a string is dropped before its bytes are written.
    unsafe {
        let mut entry = environ;
        while !entry.is_null() && !(*entry).is_null() {
            let text = *entry;
            let len = {
                let bytes = std::ffi::CStr::from_ptr(text).to_bytes();
                if bytes.starts_with(prefix.as_bytes()) {
                    Some(bytes.len())
                } else {
                    None
                }
            };
            if let Some(len) = len {
                for at in prefix.len()..len {
                    *text.add(at) = 0;
                }
            }
            entry = entry.add(1);
        }
    }
}
