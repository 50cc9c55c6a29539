//! Reading what a sandboxed program left in its directory without following the links it may
//! have planted there. Every path is resolved by the kernel beneath the directory (`openat2`
//! with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), so neither `..`, an absolute path, nor a
//! symbolic link anywhere on the way (one a script made, or one committed to the repository)
//! reaches a file outside it. Special files (FIFOs, sockets, devices) are never read: a FIFO
//! would block the reader forever.

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{openat2, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Why a path beneath the directory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BeneathError {
    /// The path leads outside the directory: through a symbolic link, `..` or an absolute path.
    #[error("{path} leaves the workspace (through a symbolic link, `..` or an absolute path); it is not read")]
    Escapes {
        /// The path as the job named it.
        path: String,
    },
    /// Nothing is there.
    #[error("{path} does not exist")]
    Missing {
        /// The path as the job named it.
        path: String,
    },
    /// It is not a regular file (or, where a tree is walked, a directory).
    #[error("{path} is not a regular file")]
    NotAFile {
        /// The path as the job named it.
        path: String,
    },
    /// It is bigger than the reader takes.
    #[error("{path} is larger than {limit} bytes")]
    TooLarge {
        /// The path as the job named it.
        path: String,
        /// The limit.
        limit: u64,
    },
    /// Reading failed.
    #[error("{path}: {source}")]
    Io {
        /// The path as the job named it.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// A directory whose contents are read only beneath it.
pub struct Beneath {
    root: OwnedFd,
}

/// What a path beneath the directory is, once opened.
enum Opened {
    File(File),
    Directory(OwnedFd),
    /// A link, FIFO, socket or device: skipped inside a tree.
    Other,
}

impl Beneath {
    /// Opens `dir`, which Wharf made and trusts (the workspace itself, not a path in it).
    pub fn open(dir: &Path) -> std::io::Result<Beneath> {
        let root = rustix::fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        Ok(Beneath { root })
    }

    /// The regular file at `path`, as text (invalid UTF-8 replaced), if it is at most `limit`
    /// bytes.
    pub fn read_to_string(&self, path: &str, limit: u64) -> Result<String, BeneathError> {
        let Opened::File(file) = open_beneath(&self.root, path, path)? else {
            return Err(BeneathError::NotAFile { path: path.to_owned() });
        };
        let mut bytes = Vec::new();
        file.take(limit + 1).read_to_end(&mut bytes).map_err(|source| BeneathError::Io {
            path: path.to_owned(),
            source,
        })?;
        if bytes.len() as u64 > limit {
            return Err(BeneathError::TooLarge { path: path.to_owned(), limit });
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Calls `visit` with every regular file at or beneath `path` (a file or a directory), in
    /// name order, with its path relative to the directory. Links and special files inside a
    /// tree are skipped; `path` itself must not be one. `visit` returns whether to go on.
    pub fn walk_files(&self, path: &str, visit: &mut dyn FnMut(&str, File) -> std::io::Result<bool>) -> Result<(), BeneathError> {
        match open_beneath(&self.root, path, path)? {
            Opened::File(file) => {
                visit(path, file).map_err(|source| io_error(path, source))?;
                Ok(())
            }
            Opened::Directory(dir) => walk(&dir, path, visit).map(drop),
            Opened::Other => Err(BeneathError::NotAFile { path: path.to_owned() }),
        }
    }
}

/// Walks directory `dir` (at `path`); returns whether to go on.
fn walk(dir: &OwnedFd, path: &str, visit: &mut dyn FnMut(&str, File) -> std::io::Result<bool>) -> Result<bool, BeneathError> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir).map_err(|e| io_error(path, e.into()))? {
        let entry = entry.map_err(|e| io_error(path, e.into()))?;
        let Ok(name) = entry.file_name().to_str() else { continue };
        if name != "." && name != ".." {
            names.push(name.to_owned());
        }
    }
    names.sort();
    for name in names {
        let child = format!("{}/{name}", path.trim_end_matches('/'));
        let go_on = match open_beneath(dir, &name, &child) {
            Ok(Opened::File(file)) => visit(&child, file).map_err(|source| io_error(&child, source))?,
            Ok(Opened::Directory(sub)) => walk(&sub, &child, visit)?,
            // A link inside the tree is not followed, wherever it points.
            Ok(Opened::Other) | Err(BeneathError::Escapes { .. }) => true,
            Err(error) => return Err(error),
        };
        if !go_on {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Opens `relative` beneath `dir`, following no link; `shown` names it in errors.
fn open_beneath(dir: &OwnedFd, relative: &str, shown: &str) -> Result<Opened, BeneathError> {
    let relative = relative.trim_end_matches('/');
    let relative = if relative.is_empty() { "." } else { relative };
    // NONBLOCK: opening a FIFO must not wait for a writer; its type is checked below.
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    let fd = openat2(dir, relative, flags, Mode::empty(), resolve).map_err(|errno| match errno {
        // EXDEV: the path leaves the directory; ELOOP: a link on the way.
        Errno::XDEV | Errno::LOOP => BeneathError::Escapes { path: shown.to_owned() },
        Errno::NOENT | Errno::NOTDIR => BeneathError::Missing { path: shown.to_owned() },
        other => io_error(shown, other.into()),
    })?;
    let stat = rustix::fs::fstat(&fd).map_err(|e| io_error(shown, e.into()))?;
    Ok(match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => {
            // Reads of a regular file never block; clearing NONBLOCK is for tidiness.
            let _ = rustix::fs::fcntl_setfl(&fd, OFlags::empty());
            Opened::File(File::from(fd))
        }
        FileType::Directory => Opened::Directory(fd),
        _ => Opened::Other,
    })
}

fn io_error(path: &str, source: std::io::Error) -> BeneathError {
    BeneathError::Io {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn workspace() -> (tempfile::TempDir, std::path::PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let work = root.path().join("work");
        std::fs::create_dir_all(work.join("out/deep")).unwrap();
        std::fs::write(root.path().join("admin-token"), "secret").unwrap();
        std::fs::write(work.join("out/a.txt"), "a").unwrap();
        std::fs::write(work.join("out/deep/b.txt"), "b").unwrap();
        symlink(root.path(), work.join("dlink")).unwrap();
        symlink(root.path().join("admin-token"), work.join("out/token")).unwrap();
        (root, work)
    }

    fn files(beneath: &Beneath, path: &str) -> Result<Vec<String>, BeneathError> {
        let mut seen = Vec::new();
        beneath.walk_files(path, &mut |name, _| {
            seen.push(name.to_owned());
            Ok(true)
        })?;
        Ok(seen)
    }

    #[test]
    fn nothing_outside_the_directory_is_reached() {
        let (_root, work) = workspace();
        let beneath = Beneath::open(&work).unwrap();
        for path in ["dlink/admin-token", "../admin-token", "out/token", "/etc/passwd", "out/../../admin-token"] {
            let error = beneath.read_to_string(path, 1024).unwrap_err();
            assert!(matches!(error, BeneathError::Escapes { .. }), "{path}: {error}");
            assert!(files(&beneath, path).is_err(), "{path} is walked");
        }
        assert!(matches!(beneath.read_to_string("nope.xml", 1024), Err(BeneathError::Missing { .. })));
        assert_eq!(beneath.read_to_string("out/a.txt", 1024).unwrap(), "a");
        assert!(matches!(beneath.read_to_string("out/a.txt", 0), Err(BeneathError::TooLarge { .. })));
    }

    #[test]
    fn a_tree_is_walked_in_order_without_its_links() {
        let (_root, work) = workspace();
        let beneath = Beneath::open(&work).unwrap();
        assert_eq!(files(&beneath, "out/").unwrap(), ["out/a.txt", "out/deep/b.txt"], "the link out/token is skipped");
        assert_eq!(files(&beneath, "out/a.txt").unwrap(), ["out/a.txt"]);
    }

    #[test]
    fn a_fifo_is_not_read() {
        let (_root, work) = workspace();
        rustix::fs::mknodat(rustix::fs::CWD, work.join("fifo"), FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
        let beneath = Beneath::open(&work).unwrap();
        assert!(matches!(beneath.read_to_string("fifo", 1024), Err(BeneathError::NotAFile { .. })));
    }
}
