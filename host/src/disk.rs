//! Disk space: how much is free where files are about to be written, and
//! byte counts for people (`1.5 GiB`).

use std::io;
use std::path::Path;

/// Bytes that this process may still write on the filesystem holding
/// `path`, or that would hold it (its nearest existing ancestor: the
/// directory may not exist yet); `None` where the platform gives no figure.
pub fn available_bytes(path: &Path) -> io::Result<Option<u64>> {
    let existing = path
        .ancestors()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    statvfs_available(existing)
}

#[cfg(target_os = "linux")]
// The fields' types differ between targets: not u64 on all of them.
#[allow(clippy::useless_conversion)]
fn statvfs_available(path: &Path) -> io::Result<Option<u64>> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a NUL-terminated path and a zeroed struct for statvfs to fill.
    let stats = unsafe {
        let mut stats: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c_path.as_ptr(), &mut stats) != 0 {
            return Err(io::Error::last_os_error());
        }
        stats
    };
    // Blocks free to unprivileged users, not the root reserve.
    Ok(Some(
        u64::from(stats.f_bavail).saturating_mul(u64::from(stats.f_frsize)),
    ))
}

#[cfg(not(target_os = "linux"))]
fn statvfs_available(_path: &Path) -> io::Result<Option<u64>> {
    Ok(None)
}

/// `name` in this user's cache directory: `$XDG_CACHE_HOME/tag-server/NAME`
/// or `~/.cache/tag-server/NAME`; without either, `tag-server-NAME-UID` in
/// the temporary directory.
pub fn cache_dir(name: &str) -> std::path::PathBuf {
    use std::path::PathBuf;
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    match cache {
        Some(cache) => cache.join("tag-server").join(name),
        None => std::env::temp_dir().join(format!("tag-server-{name}-{}", unsafe {
            // SAFETY: geteuid has no preconditions.
            libc::geteuid()
        })),
    }
}

/// `bytes` in binary units with one decimal: `812 B`, `93.5 MiB`, `8.7 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_in_binary_units() {
        assert_eq!(human_bytes(812), "812 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(98_041_036), "93.5 MiB");
        assert_eq!(human_bytes(9_342_000_000), "8.7 GiB");
    }

    #[test]
    fn a_directory_not_made_yet_is_measured_on_its_parent() {
        let dir = tempfile::tempdir().unwrap();
        let here = available_bytes(dir.path()).unwrap();
        let below = available_bytes(&dir.path().join("a/b/c")).unwrap();
        assert!(!dir.path().join("a").exists());
        if cfg!(target_os = "linux") {
            let (here, below) = (here.unwrap(), below.unwrap());
            // The same filesystem, measured twice: within a few MB.
            assert!(here.abs_diff(below) < 64 << 20, "{here} vs {below}");
            assert!(here > 0);
        }
        assert!(available_bytes(Path::new("relative/not/there")).is_ok());
    }
}
