//! The checks a plugin file passes before it is ever `dlopen`ed (a library's
//! ELF constructors run at `dlopen`, with the server's rights):
//!
//! - ownership and permissions, as sshd's StrictModes checks keys: the
//!   file's real path (symlinks resolved) and every directory above it
//!   belong to root or to this server's user and are not writable by group
//!   or others (a sticky, root-owned directory such as /tmp still lets
//!   others add files, so it does not count as trusted);
//! - the bytes are a complete ELF shared object for this machine: every
//!   loadable segment and the header tables lie inside the file (a
//!   truncated copy would fault when mapped);
//! - the bytes checked are the bytes loaded: they are written to a private
//!   copy named by their SHA-256 in a 0700 directory of this server's, and
//!   that copy is what gets loaded.

use super::Rejection;
use object::elf::{FileHeader64, ET_DYN, PT_LOAD};
use object::read::elf::{FileHeader, ProgramHeader};
use object::Endianness;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// This machine's ELF machine number.
#[cfg(target_arch = "x86_64")]
const MACHINE: u16 = object::elf::EM_X86_64;
#[cfg(target_arch = "aarch64")]
const MACHINE: u16 = object::elf::EM_AARCH64;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const MACHINE: u16 = 0;

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Checks the owner and mode of one path (file or directory).
fn check_one(path: &Path, is_dir: bool) -> Result<(), Rejection> {
    let meta = std::fs::metadata(path).map_err(|e| Rejection::Unreadable(e.to_string()))?;
    let uid = meta.uid();
    if uid != 0 && uid != euid() {
        return Err(Rejection::ForeignOwner {
            path: path.to_path_buf(),
            uid,
            server_uid: euid(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(if is_dir {
            Rejection::WritableDirectory {
                dir: path.to_path_buf(),
                mode,
            }
        } else {
            Rejection::WritableFile { mode }
        });
    }
    Ok(())
}

/// The file's real path, once it, every directory above it, and every
/// directory above the name it was reached by (a symlink's directory could
/// swap the link) passed.
pub fn check_path(path: &Path) -> Result<PathBuf, Rejection> {
    let unreadable = |e: std::io::Error| Rejection::Unreadable(e.to_string());
    let real = std::fs::canonicalize(path).map_err(unreadable)?;
    if !real.is_file() {
        return Err(Rejection::Unreadable("not a regular file".into()));
    }
    check_one(&real, false)?;
    let named_in = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => std::fs::canonicalize(parent).map_err(unreadable)?,
        None => std::env::current_dir().map_err(unreadable)?,
    };
    for dir in named_in.ancestors().chain(real.ancestors().skip(1)) {
        check_one(dir, true)?;
    }
    Ok(real)
}

/// Checks that `bytes` are a complete ELF shared object for this machine.
pub fn check_elf(bytes: &[u8]) -> Result<(), Rejection> {
    let not_library = |why: String| Rejection::NotALibrary(why);
    let header = FileHeader64::<Endianness>::parse(bytes)
        .map_err(|e| not_library(format!("not a 64-bit ELF file: {e}")))?;
    let endian = header
        .endian()
        .map_err(|e| not_library(format!("ELF header: {e}")))?;
    if header.e_type(endian) != ET_DYN {
        return Err(not_library(format!(
            "an ELF file of type {}, not a shared object",
            header.e_type(endian)
        )));
    }
    if header.e_machine(endian) != MACHINE || !header.is_little_endian() {
        return Err(not_library(format!(
            "built for ELF machine {}, this server runs on {}",
            header.e_machine(endian),
            std::env::consts::ARCH
        )));
    }
    let size = bytes.len() as u64;
    let truncated = |needed: u64| Rejection::Truncated { needed, size };
    let segments = header
        .program_headers(endian, bytes)
        .map_err(|_| truncated(header.e_phoff(endian)))?;
    header
        .section_headers(endian, bytes)
        .map_err(|_| truncated(header.e_shoff(endian)))?;
    for segment in segments.iter().filter(|s| s.p_type(endian) == PT_LOAD) {
        let end = segment
            .p_offset(endian)
            .saturating_add(segment.p_filesz(endian));
        if end > size {
            return Err(truncated(end));
        }
    }
    Ok(())
}

/// The private directory copies are loaded from: created 0700 if missing,
/// and refused if it is not this user's alone (someone could swap files).
pub fn private_dir(dir: &Path) -> Result<(), Rejection> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) => return Err(Rejection::Unreadable(format!("{}: {e}", dir.display()))),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| Rejection::Unreadable(e.to_string()))?;
    let mode = meta.permissions().mode() & 0o777;
    if !meta.is_dir() || meta.uid() != euid() || mode & 0o077 != 0 {
        return Err(Rejection::PrivateCopy(format!(
            "{} must be a directory of uid {} with mode 0700 (it is uid {}, mode {mode:o})",
            dir.display(),
            euid(),
            meta.uid()
        )));
    }
    Ok(())
}

/// Writes `bytes` (already checked) as `<dir>/<sha256>.so`, read-only,
/// unless that copy exists; the path to load.
pub fn private_copy(dir: &Path, sha256: &str, bytes: &[u8]) -> Result<PathBuf, Rejection> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    private_dir(dir)?;
    let path = dir.join(format!("{sha256}.{}", std::env::consts::DLL_EXTENSION));
    // Copies land only by rename after a complete write, in a directory no
    // one else can write: a copy under this name holds these bytes.
    let complete = std::fs::symlink_metadata(&path)
        .is_ok_and(|m| m.is_file() && m.len() == bytes.len() as u64);
    if complete {
        return Ok(path);
    }
    // Several servers (or threads) may copy the same library at once: each
    // writes a file of its own and renames it into place; the copies are
    // identical, so whichever rename lands last is as good as the first.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let unique = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let partial = dir.join(format!(".{sha256}.{}.{unique}.partial", std::process::id()));
    let failed = |e: std::io::Error| Rejection::PrivateCopy(format!("{}: {e}", partial.display()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o500)
        .open(&partial)
        .map_err(failed)?;
    file.write_all(bytes).map_err(failed)?;
    file.sync_all().map_err(failed)?;
    std::fs::rename(&partial, &path).map_err(failed)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_complete_elf_file_is_never_truncated_and_half_of_one_always_is_refused() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        // This test binary: a shared object if built as PIE (then it
        // passes), an executable otherwise; never truncated.
        let whole = check_elf(&me);
        assert!(
            !matches!(whole, Err(Rejection::Truncated { .. })),
            "{whole:?}"
        );
        let half = check_elf(&me[..me.len() / 2]);
        match (whole, half) {
            (Ok(()), Err(Rejection::Truncated { needed, size })) => assert!(needed > size),
            (Err(Rejection::NotALibrary(_)), Err(Rejection::NotALibrary(_))) => {}
            other => panic!("{other:?}"),
        }
        let Err(Rejection::NotALibrary(why)) = check_elf(b"#!/bin/sh\necho hi\n") else {
            panic!("a script is not an ELF file");
        };
        assert!(why.contains("ELF"), "{why}");
    }

    #[test]
    fn a_private_directory_must_be_ours_alone() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("copies");
        private_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(matches!(private_dir(&dir), Err(Rejection::PrivateCopy(_))));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let copy = private_copy(&dir, "abc", b"bytes").unwrap();
        assert_eq!(std::fs::read(&copy).unwrap(), b"bytes");
        assert_eq!(copy, private_copy(&dir, "abc", b"bytes").unwrap());
    }
}
