//! The checks a plugin file passes before it is ever `dlopen`ed (a library's
//! ELF constructors run at `dlopen`, with the server's rights):
//!
//! - ownership and permissions, as sshd's StrictModes checks keys. The
//!   path is resolved one name at a time, each symbolic link hop by hop
//!   (relative to its own directory, at most [`MAX_HOPS`] of them), and
//!   every directory a name is looked up in must belong to root or to this
//!   server's user and must not let anyone else replace that name: not be
//!   writable by group or others, or be sticky with the name looked up
//!   belonging to root or to this user. The sticky bit (as on /tmp) lets
//!   only an entry's owner (or the directory's, or root) rename or remove
//!   it, so such an entry cannot be swapped by anyone else; an entry of
//!   another user's in a sticky directory can be, by that user. The file
//!   itself belongs to root or to this user and is not writable by group or
//!   others. Checking every hop's directory matters: a link whose target
//!   sits in a world-writable directory is only as safe as that directory;
//! - the bytes are a complete ELF shared object for this machine: every
//!   loadable segment and the header tables lie inside the file (a
//!   truncated copy would fault when mapped), and it is a library, not an
//!   executable (a PIE executable is `ET_DYN` too);
//! - the bytes checked are the bytes loaded: they are written to a private
//!   copy named by their SHA-256 in a 0700 directory of this server's, whose
//!   path passes the same directory checks, and that copy is what gets
//!   loaded.

use crate::rejection::Rejection;
use object::elf::{FileHeader64, DF_1_PIE, DT_FLAGS_1, ET_DYN, PT_DYNAMIC, PT_INTERP, PT_LOAD};
use object::read::elf::{Dyn, FileHeader, ProgramHeader};
use object::Endianness;
use std::ffi::OsString;
use std::fs::Metadata;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// This machine's ELF machine number.
#[cfg(target_arch = "x86_64")]
const MACHINE: u16 = object::elf::EM_X86_64;
#[cfg(target_arch = "aarch64")]
const MACHINE: u16 = object::elf::EM_AARCH64;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const MACHINE: u16 = 0;

/// The most symbolic links followed while resolving one path (Linux's own
/// limit), so a loop of links is refused instead of followed forever.
pub const MAX_HOPS: usize = 40;

/// The sticky bit of a directory's mode.
const STICKY: u32 = 0o1000;

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Root and this server's user: the only owners whose files and
/// directories it trusts.
fn trusted(uid: u32) -> bool {
    uid == 0 || uid == euid()
}

fn unreadable(at: &Path) -> impl Fn(std::io::Error) -> Rejection + '_ {
    move |e| Rejection::Unreadable(format!("{}: {e}", at.display()))
}

/// Checks the directory `dir` (symlink-free) that the name `entry` (whose
/// own metadata, not followed, is `found`) was looked up in: no one but
/// root and this user may be able to replace that name.
fn check_dir(dir: &Path, entry: &Path, found: &Metadata) -> Result<(), Rejection> {
    let meta = std::fs::metadata(dir).map_err(unreadable(dir))?;
    if !trusted(meta.uid()) {
        return Err(Rejection::ForeignOwner {
            path: dir.to_path_buf(),
            uid: meta.uid(),
            server_uid: euid(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 == 0 {
        return Ok(());
    }
    if mode & STICKY == 0 {
        return Err(Rejection::WritableDirectory {
            dir: dir.to_path_buf(),
            mode,
            owner: meta.uid(),
            server_uid: euid(),
        });
    }
    // Sticky: others may add names here, but only an entry's owner (or
    // the directory's, which is trusted) may rename or remove it.
    if trusted(found.uid()) {
        return Ok(());
    }
    Err(Rejection::ReplaceableEntry {
        entry: entry.to_path_buf(),
        uid: found.uid(),
        dir: dir.to_path_buf(),
        mode,
        server_uid: euid(),
    })
}

/// Pushes `path`'s components onto the stack of names still to resolve
/// (the next one last); an absolute path restarts `real` at the root.
fn push_components(pending: &mut Vec<OsString>, path: &Path, real: &mut PathBuf) {
    if path.is_absolute() {
        *real = PathBuf::from("/");
    }
    for component in path.components().rev() {
        match component {
            Component::Normal(name) => pending.push(name.to_os_string()),
            Component::ParentDir => pending.push(OsString::from("..")),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
}

/// Where `path` really is, and its metadata: resolved one name at a time,
/// following each symbolic link hop by hop relative to the link's own
/// directory, with every directory a name is looked up in checked by
/// [`check_dir`] (so each hop's directory and all above it are).
pub fn resolve_checked(path: &Path) -> Result<(PathBuf, Metadata), Rejection> {
    // From the root even for a relative path: the directories above the
    // working directory are on the way too.
    let absolute = match path.is_absolute() {
        true => path.to_path_buf(),
        false => std::env::current_dir()
            .map_err(unreadable(Path::new(".")))?
            .join(path),
    };
    let mut real = PathBuf::from("/");
    let mut pending = Vec::new();
    push_components(&mut pending, &absolute, &mut real);
    let mut hops = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            // `real` has no links left in it, so its parent is the real one
            // (and was checked on the way down).
            real.pop();
            continue;
        }
        let next = real.join(&name);
        let found = std::fs::symlink_metadata(&next).map_err(unreadable(&next))?;
        check_dir(&real, &next, &found)?;
        if found.file_type().is_symlink() {
            hops += 1;
            if hops > MAX_HOPS {
                return Err(Rejection::Unreadable(format!(
                    "{}: more than {MAX_HOPS} symbolic links",
                    path.display()
                )));
            }
            let target = std::fs::read_link(&next).map_err(unreadable(&next))?;
            push_components(&mut pending, &target, &mut real);
        } else if found.is_dir() || pending.is_empty() {
            real = next;
        } else {
            return Err(Rejection::Unreadable(format!(
                "{}: not a directory",
                next.display()
            )));
        }
    }
    let meta = std::fs::symlink_metadata(&real).map_err(unreadable(&real))?;
    Ok((real, meta))
}

/// The file's real path, once every directory on the way to it (through
/// every symlink hop) and the file itself passed.
pub fn check_path(path: &Path) -> Result<PathBuf, Rejection> {
    let (real, meta) = resolve_checked(path)?;
    if !meta.is_file() {
        return Err(Rejection::Unreadable(format!(
            "{}: not a regular file",
            real.display()
        )));
    }
    if !trusted(meta.uid()) {
        return Err(Rejection::ForeignOwner {
            path: real,
            uid: meta.uid(),
            server_uid: euid(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(Rejection::WritableFile {
            file: real,
            mode,
            owner: meta.uid(),
            server_uid: euid(),
        });
    }
    Ok(real)
}

/// Why an `ET_DYN` file is an executable rather than a shared library, if
/// it is one: it names a program interpreter, or its dynamic section says
/// PIE. (A PIE executable is `ET_DYN` like a library; `dlopen`ing one is
/// not what a plugin is for, and glibc refuses it only sometimes.)
fn executable_marker(
    header: &FileHeader64<Endianness>,
    endian: Endianness,
    bytes: &[u8],
) -> Result<Option<&'static str>, Rejection> {
    let not_library = |why: String| Rejection::NotALibrary(why);
    let segments = header
        .program_headers(endian, bytes)
        .map_err(|e| not_library(format!("program headers: {e}")))?;
    if segments.iter().any(|s| s.p_type(endian) == PT_INTERP) {
        return Ok(Some("it names a program interpreter (PT_INTERP)"));
    }
    for segment in segments.iter().filter(|s| s.p_type(endian) == PT_DYNAMIC) {
        let entries = segment
            .dynamic(endian, bytes)
            .map_err(|e| not_library(format!("dynamic section: {e}")))?
            .unwrap_or_default();
        let pie = entries
            .iter()
            .any(|d| d.tag(endian) == DT_FLAGS_1 && d.val(endian) & u64::from(DF_1_PIE) != 0);
        if pie {
            return Ok(Some("its dynamic section flags it PIE (DF_1_PIE)"));
        }
    }
    Ok(None)
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
    // Only now, with every segment known to be inside the file.
    if let Some(why) = executable_marker(header, endian, bytes)? {
        return Err(not_library(format!(
            "an executable, not a shared library: {why}; build the plugin as a cdylib"
        )));
    }
    Ok(())
}

/// The private directory copies are loaded from, as its real path: created
/// 0700 if missing, and refused if it is not this user's alone or if any
/// directory above it (through any symlink) lets others swap it.
pub fn private_dir(dir: &Path) -> Result<PathBuf, Rejection> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) => {
            return Err(Rejection::PrivateCopy(format!(
                "the private copies directory {} cannot be created ({e}): pass --plugin-copies-dir (TAG_PLUGIN_COPIES_DIR) a directory of your own that no one else can write",
                dir.display()
            )))
        }
    }
    let (real, meta) = resolve_checked(dir).map_err(|why| Rejection::CopiesDirectory {
        copies: dir.to_path_buf(),
        why: Box::new(why),
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if !meta.is_dir() || meta.uid() != euid() || mode & 0o077 != 0 {
        return Err(Rejection::PrivateCopy(format!(
            "{} must be a directory of uid {} with mode 0700 (it is uid {}, mode {mode:o}): `chmod 700` it if it is yours, or pass --plugin-copies-dir another",
            real.display(),
            euid(),
            meta.uid()
        )));
    }
    Ok(real)
}

/// Writes `bytes` (already checked) as `<dir>/<sha256>.so`, read-only,
/// unless that copy exists; the path to load.
pub fn private_copy(dir: &Path, sha256: &str, bytes: &[u8]) -> Result<PathBuf, Rejection> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = private_dir(dir)?;
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
    use std::os::unix::fs::{chown, lchown, symlink};

    /// A uid that is neither root nor (when root runs the tests) ours.
    const OTHER: u32 = 65534;

    fn set_mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A directory `name` in `parent` with exactly `mode`.
    fn dir(parent: &Path, name: &str, mode: u32) -> PathBuf {
        let dir = parent.join(name);
        std::fs::create_dir(&dir).unwrap();
        set_mode(&dir, mode);
        dir
    }

    /// A file `name` in `parent`, mode 0755.
    fn file(parent: &Path, name: &str) -> PathBuf {
        let file = parent.join(name);
        std::fs::write(&file, b"library").unwrap();
        set_mode(&file, 0o755);
        file
    }

    /// A fresh, symlink-free base directory of ours, mode 0755.
    fn base() -> (tempfile::TempDir, PathBuf) {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().canonicalize().unwrap();
        set_mode(&path, 0o755);
        (temp, path)
    }

    fn is_root() -> bool {
        euid() == 0
    }

    #[test]
    fn a_sticky_writable_parent_is_safe_when_the_entry_below_it_is_ours() {
        let (_temp, base) = base();
        let shared = dir(&base, "tmp", 0o1777);
        let clone = dir(&shared, "clone", 0o755);
        let lib = file(&clone, "x.so");
        assert_eq!(check_path(&lib), Ok(lib.clone()));
        // A file of ours right in the sticky directory: no one else can
        // rename or remove it either.
        let direct = file(&shared, "y.so");
        assert_eq!(check_path(&direct), Ok(direct.clone()));
        // The same directory without the sticky bit lets anyone swap them.
        set_mode(&shared, 0o777);
        for path in [&lib, &direct] {
            assert_eq!(
                check_path(path),
                Err(Rejection::WritableDirectory {
                    dir: shared.clone(),
                    mode: 0o777,
                    owner: euid(),
                    server_uid: euid(),
                })
            );
        }
        // Group-writable is the same as world-writable.
        set_mode(&shared, 0o775);
        let Err(rejection) = check_path(&lib) else {
            panic!("a group-writable directory passed");
        };
        let text = rejection.to_string();
        assert!(
            text.contains(&format!("`chmod go-w {}`", shared.display())),
            "{text}"
        );
    }

    #[test]
    fn a_sticky_parent_does_not_protect_another_users_entry() {
        if !is_root() {
            eprintln!("not root: making another user's entries needs chown");
            return;
        }
        let (_temp, base) = base();
        let shared = dir(&base, "tmp", 0o1777);
        let theirs = dir(&shared, "theirs", 0o755);
        let lib = file(&theirs, "x.so");
        chown(&theirs, Some(OTHER), None).unwrap();
        let expected = Rejection::ReplaceableEntry {
            entry: theirs.clone(),
            uid: OTHER,
            dir: shared.clone(),
            mode: 0o1777,
            server_uid: euid(),
        };
        assert_eq!(check_path(&lib), Err(expected.clone()));
        let text = expected.to_string();
        assert!(
            text.contains("--plugins-dir") && !text.contains("chmod"),
            "{text}"
        );
        // A symlink of theirs in the sticky directory, to a file of ours:
        // they could point it elsewhere.
        let mine = dir(&base, "mine", 0o755);
        let target = file(&mine, "x.so");
        let link = shared.join("link.so");
        symlink(&target, &link).unwrap();
        assert_eq!(check_path(&link), Ok(target.clone()));
        lchown(&link, Some(OTHER), None).unwrap();
        assert!(
            matches!(check_path(&link), Err(Rejection::ReplaceableEntry { entry, .. }) if entry == link)
        );
        // Their file right in the sticky directory.
        let direct = file(&shared, "y.so");
        chown(&direct, Some(OTHER), None).unwrap();
        assert!(matches!(
            check_path(&direct),
            Err(Rejection::ReplaceableEntry { .. })
        ));
    }

    #[test]
    fn the_file_itself_must_be_ours_or_roots_and_not_writable_by_others() {
        let (_temp, base) = base();
        let plugins = dir(&base, "plugins", 0o755);
        let lib = file(&plugins, "x.so");
        set_mode(&lib, 0o775);
        let rejection = check_path(&lib).unwrap_err();
        assert_eq!(
            rejection,
            Rejection::WritableFile {
                file: lib.clone(),
                mode: 0o775,
                owner: euid(),
                server_uid: euid(),
            }
        );
        let text = rejection.to_string();
        assert!(
            text.contains(&format!("`chmod go-w {}`", lib.display())),
            "{text}"
        );
        // In a sticky directory too: the sticky bit says nothing of the
        // file's own mode.
        let shared = dir(&base, "tmp", 0o1777);
        let open = file(&shared, "open.so");
        set_mode(&open, 0o757);
        assert!(matches!(
            check_path(&open),
            Err(Rejection::WritableFile { mode: 0o757, .. })
        ));
        if is_root() {
            set_mode(&lib, 0o755);
            chown(&lib, Some(OTHER), None).unwrap();
            assert!(
                matches!(check_path(&lib), Err(Rejection::ForeignOwner { uid: OTHER, path, .. }) if path == lib)
            );
        }
    }

    #[test]
    fn every_symlink_hops_directory_is_checked() {
        let (_temp, base) = base();
        let plugins = dir(&base, "plugins", 0o755);
        let open = dir(&base, "open", 0o777);
        let safe = dir(&base, "safe", 0o755);
        let target = file(&safe, "c.so");
        // plugins/a.so -> open/b.so -> ../safe/c.so (relative to open/):
        // the first name's directory and the target's are both fine, the
        // middle hop's is world-writable, so b.so could be swapped.
        symlink(open.join("b.so"), plugins.join("a.so")).unwrap();
        symlink("../safe/c.so", open.join("b.so")).unwrap();
        assert_eq!(
            check_path(&plugins.join("a.so")),
            Err(Rejection::WritableDirectory {
                dir: open.clone(),
                mode: 0o777,
                owner: euid(),
                server_uid: euid(),
            })
        );
        set_mode(&open, 0o755);
        assert_eq!(check_path(&plugins.join("a.so")), Ok(target.clone()));
        // A link through a directory symlink whose target's parent is open.
        let hidden = dir(&open, "lib", 0o755);
        let deep = file(&hidden, "d.so");
        symlink(&hidden, safe.join("libdir")).unwrap();
        symlink(safe.join("libdir").join("d.so"), plugins.join("d.so")).unwrap();
        assert_eq!(check_path(&plugins.join("d.so")), Ok(deep));
        set_mode(&open, 0o777);
        assert!(matches!(
            check_path(&plugins.join("d.so")),
            Err(Rejection::WritableDirectory { dir, .. }) if dir == open
        ));
    }

    #[test]
    fn a_loop_of_symlinks_is_refused_after_the_hop_limit() {
        let (_temp, base) = base();
        symlink(base.join("b.so"), base.join("a.so")).unwrap();
        symlink(base.join("a.so"), base.join("b.so")).unwrap();
        let Err(Rejection::Unreadable(why)) = check_path(&base.join("a.so")) else {
            panic!("a loop of links resolved");
        };
        assert!(why.contains("symbolic links"), "{why}");
    }

    #[test]
    fn a_copies_directory_under_a_writable_parent_is_refused() {
        let (_temp, base) = base();
        let open = dir(&base, "open", 0o777);
        let copies = open.join("copies");
        let expected = Rejection::CopiesDirectory {
            copies: copies.clone(),
            why: Box::new(Rejection::WritableDirectory {
                dir: open.clone(),
                mode: 0o777,
                owner: euid(),
                server_uid: euid(),
            }),
        };
        assert_eq!(private_dir(&copies), Err(expected.clone()));
        assert_eq!(
            private_copy(&copies, "abc", b"bytes"),
            Err(expected.clone())
        );
        assert!(!copies.join("abc.so").exists(), "a copy was written");
        let text = expected.to_string();
        assert!(
            text.contains(&format!("`chmod go-w {}`", open.display())),
            "{text}"
        );
        // Under a sticky parent (as <temp dir>/tag-server-plugins-<uid> is)
        // the copies directory, ours, cannot be swapped.
        let shared = dir(&base, "tmp", 0o1777);
        let copies = shared.join("copies");
        assert_eq!(private_dir(&copies), Ok(copies.clone()));
        // Reached through a symlink in a writable directory: refused too.
        symlink(&copies, open.join("link")).unwrap();
        assert!(matches!(
            private_dir(&open.join("link")),
            Err(Rejection::CopiesDirectory { .. })
        ));
    }

    #[test]
    fn a_pie_executable_is_not_a_library_and_half_of_one_is_truncated() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        // This test binary is a PIE executable (ET_DYN, like a library).
        let Err(Rejection::NotALibrary(why)) = check_elf(&me) else {
            panic!("the test executable passed as a shared library");
        };
        assert!(why.contains("an executable"), "{why}");
        match check_elf(&me[..me.len() / 2]) {
            Err(Rejection::Truncated { needed, size }) => assert!(needed > size),
            other => panic!("{other:?}"),
        }
        let Err(Rejection::NotALibrary(why)) = check_elf(b"#!/bin/sh\necho hi\n") else {
            panic!("a script is not an ELF file");
        };
        assert!(why.contains("ELF"), "{why}");
    }

    #[test]
    fn a_private_directory_must_be_ours_alone() {
        let (_temp, base) = base();
        let dir = base.join("copies");
        assert_eq!(private_dir(&dir), Ok(dir.clone()));
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        set_mode(&dir, 0o755);
        assert!(matches!(private_dir(&dir), Err(Rejection::PrivateCopy(_))));
        set_mode(&dir, 0o700);
        let copy = private_copy(&dir, "abc", b"bytes").unwrap();
        assert_eq!(std::fs::read(&copy).unwrap(), b"bytes");
        assert_eq!(copy, private_copy(&dir, "abc", b"bytes").unwrap());
    }

    #[test]
    fn a_copies_directory_that_cannot_be_made_names_the_flag_to_set() {
        let (_temp, base) = base();
        // A home whose cache cannot hold a directory (here: it is a file).
        let home = file(&base, "home");
        let Err(Rejection::PrivateCopy(why)) = private_dir(&home.join(".cache/tag-server")) else {
            panic!("made a directory under a file");
        };
        assert!(
            why.contains("cannot be created") && why.contains("--plugin-copies-dir"),
            "{why}"
        );
    }
}
