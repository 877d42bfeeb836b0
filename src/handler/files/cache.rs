//! The per-core open-file cache: a hot file costs no open and no stat per
//! request. Entries are trusted for `VALID`, then reopened, so a replaced
//! or edited file is seen within that time; misses and errors are not
//! cached. Bounded: when full, stale entries go first, then any.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nix::fcntl::{fcntl, openat2, FcntlArg, OFlag, OpenHow, ResolveFlag};

/// How long an entry is served without looking at the file system again.
pub const VALID: Duration = Duration::from_secs(1);

/// What a request needs to know about an open file or directory.
#[derive(Debug)]
pub struct Opened {
    /// The open file (or directory).
    pub file: Arc<File>,
    /// A directory, not a regular file.
    pub is_dir: bool,
    /// Size in bytes.
    pub size: u64,
    /// Last modification time.
    pub mtime: SystemTime,
    /// Strong validator from (inode, size, mtime), quotes included.
    pub etag: String,
    /// `mtime` as an HTTP date.
    pub last_modified: String,
    /// From the extension; `application/octet-stream` when unknown.
    pub content_type: &'static str,
}

struct Slot {
    opened: Arc<Opened>,
    checked: Instant,
}

/// Open files by path relative to the root.
pub struct OpenCache {
    slots: HashMap<Box<[u8]>, Slot>,
    capacity: usize,
}

impl OpenCache {
    /// A cache of at most `capacity` entries; 0 opens on every request.
    pub fn new(capacity: usize) -> OpenCache {
        OpenCache {
            slots: HashMap::new(),
            capacity,
        }
    }

    /// The file at `rel` under `root`, from the cache while fresh.
    pub fn get(&mut self, root: &OwnedFd, rel: &[u8], now: Instant) -> io::Result<Arc<Opened>> {
        if let Some(slot) = self.slots.get(rel) {
            if now.saturating_duration_since(slot.checked) < VALID {
                return Ok(slot.opened.clone());
            }
        }
        let opened = Arc::new(open_beneath(root, rel)?);
        if self.capacity > 0 {
            if self.slots.len() >= self.capacity && !self.slots.contains_key(rel) {
                self.evict(now);
            }
            let slot = Slot {
                opened: opened.clone(),
                checked: now,
            };
            self.slots.insert(rel.into(), slot);
        }
        Ok(opened)
    }

    fn evict(&mut self, now: Instant) {
        self.slots
            .retain(|_, s| now.saturating_duration_since(s.checked) < VALID);
        if self.slots.len() >= self.capacity {
            if let Some(key) = self.slots.keys().next().cloned() {
                self.slots.remove(&key);
            }
        }
    }
}

/// Opens the root directory itself, checking that `openat2` works here.
pub fn open_root(root: &Path) -> io::Result<OwnedFd> {
    let dir = File::open(root)?;
    if !dir.metadata()?.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a directory",
        ));
    }
    let fd = OwnedFd::from(dir);
    open_beneath(&fd, b"").map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("openat2 with RESOLVE_BENEATH failed (Linux 5.6+ needed): {e}"),
        )
    })?;
    Ok(fd)
}

/// Opens `rel` without ever leaving `root`: RESOLVE_BENEATH refuses `..`
/// and symlinks (absolute or relative) that lead outside, so a link
/// planted in the root cannot expose the rest of the disk. O_NONBLOCK
/// keeps a FIFO from blocking the loop at open; it is cleared again for
/// regular files, whose reads must wait for the disk, not fail.
fn open_beneath(root: &OwnedFd, rel: &[u8]) -> io::Result<Opened> {
    let path = if rel.is_empty() {
        OsStr::new(".")
    } else {
        OsStr::from_bytes(rel)
    };
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let file = File::from(openat2(root, path, how)?);
    let meta = file.metadata()?;
    if meta.is_file() {
        fcntl(&file, FcntlArg::F_SETFL(OFlag::empty()))?;
    } else if !meta.is_dir() {
        return Err(io::Error::from(io::ErrorKind::NotFound));
    }
    let mtime = meta.modified()?;
    let nanos = mtime
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    Ok(Opened {
        is_dir: meta.is_dir(),
        size: meta.len(),
        etag: format!("\"{:x}-{:x}-{:x}\"", meta.ino(), meta.len(), nanos),
        last_modified: httpdate::fmt_http_date(mtime),
        content_type: mime_guess::from_path(path)
            .first_raw()
            .unwrap_or("application/octet-stream"),
        mtime,
        file: Arc::new(file),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory with files a, b, c and a symlink out of it.
    fn scratch(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("coreloop-cache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["a", "b", "c"] {
            std::fs::write(dir.join(f), f).unwrap();
        }
        std::os::unix::fs::symlink("/etc/hostname", dir.join("out")).unwrap();
        dir
    }

    #[test]
    fn bounded_and_trusted_only_while_valid() {
        let dir = scratch("bounded");
        let root = open_root(&dir).unwrap();
        let mut cache = OpenCache::new(2);
        let t0 = Instant::now();
        let a = cache.get(&root, b"a", t0).unwrap();
        assert!(
            Arc::ptr_eq(&a, &cache.get(&root, b"a", t0).unwrap()),
            "served from the cache"
        );
        cache.get(&root, b"b", t0).unwrap();
        cache.get(&root, b"c", t0).unwrap();
        assert_eq!(cache.slots.len(), 2, "never more than its capacity");
        let later = t0 + VALID;
        let a2 = cache.get(&root, b"a", later).unwrap();
        assert!(!Arc::ptr_eq(&a, &a2), "reopened once stale");
        assert_eq!(a2.size, 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn refuses_to_leave_the_root() {
        let dir = scratch("beneath");
        let root = open_root(&dir).unwrap();
        let mut cache = OpenCache::new(0);
        let now = Instant::now();
        for rel in [&b"out"[..], b"../etc/hostname", b"/etc/hostname"] {
            let err = cache.get(&root, rel, now).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(nix::libc::EXDEV), "{rel:?}");
        }
        assert!(cache.slots.is_empty(), "errors are not cached");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
