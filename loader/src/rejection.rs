//! Why a file in the plugins directory was not loaded, in words a person
//! can act on: each ownership or permission fault ends in the one safe fix.

use std::path::{Path, PathBuf};

/// Why a file in the plugins directory was not loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The file can be changed by users other than its owner.
    #[error("{}", path_fault(self, Subject::Plugins))]
    WritableFile {
        /// The file (its real path).
        file: PathBuf,
        /// The file's permission bits.
        mode: u32,
        /// Its owner (root or the server's user).
        owner: u32,
        /// The server's effective uid.
        server_uid: u32,
    },
    /// A directory on the way to the file (through any symlink) lets users
    /// other than its owner add, rename or replace entries: writable by
    /// group or others and not sticky.
    #[error("{}", path_fault(self, Subject::Plugins))]
    WritableDirectory {
        /// The directory.
        dir: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// Its owner (root or the server's user).
        owner: u32,
        /// The server's effective uid.
        server_uid: u32,
    },
    /// The file or a directory on the way to it belongs to another user.
    #[error("{}", path_fault(self, Subject::Plugins))]
    ForeignOwner {
        /// The file or directory.
        path: PathBuf,
        /// Its owner.
        uid: u32,
        /// The server's effective uid.
        server_uid: u32,
    },
    /// An entry on the way to the file sits in a sticky directory others
    /// can write, and belongs to another user, who could rename or replace
    /// it (the sticky bit protects only its owner's right to).
    #[error("{}", path_fault(self, Subject::Plugins))]
    ReplaceableEntry {
        /// The entry (a directory, symlink or the file).
        entry: PathBuf,
        /// Its owner.
        uid: u32,
        /// The sticky directory it is in.
        dir: PathBuf,
        /// That directory's permission bits.
        mode: u32,
        /// The server's effective uid.
        server_uid: u32,
    },
    /// A directory on the way to the private copies directory would let
    /// someone else swap the copies, so none is loaded from there.
    #[error("the private copies directory {} is not safe to load from: {}", copies.display(), path_fault(why, Subject::Copies))]
    CopiesDirectory {
        /// The copies directory as configured.
        copies: PathBuf,
        /// What is wrong on the way to it.
        why: Box<Rejection>,
    },
    /// A loadable segment or header table lies beyond the end of the file.
    #[error("truncated: the ELF file needs {needed} bytes but has {size}")]
    Truncated {
        /// Where the furthest part it declares ends.
        needed: u64,
        /// The file's size.
        size: u64,
    },
    /// The private copy the library is loaded from could not be made.
    #[error("cannot make the private copy to load: {0}")]
    PrivateCopy(String),
    /// The file could not be read.
    #[error("cannot read the file: {0}")]
    Unreadable(String),
    /// The file is not a shared library this platform can load.
    #[error("not a loadable shared library: {0}")]
    NotALibrary(String),
    /// A shared library without the tag-plugin entry point.
    #[error("not a tag plugin: the library exports no abi_stable root module (build it with tag_plugin_api::export_plugin!)")]
    NotATagPlugin,
    /// Built against a plugin-api version this host cannot use.
    #[error("incompatible plugin-api version: the plugin was built against {found}, this server uses {expected}; rebuild the plugin against tag-plugin-api {expected}")]
    IncompatibleApi {
        /// The version the plugin declares.
        found: String,
        /// This host's version.
        expected: String,
    },
    /// Same version, different layout (or another abi_stable interface).
    #[error("ABI mismatch with tag-plugin-api {expected}; rebuild the plugin against this version: {detail}")]
    AbiMismatch {
        /// This host's version.
        expected: String,
        /// abi_stable's description of the difference.
        detail: String,
    },
    /// The plugin's own start-up failed.
    #[error("the plugin failed to start: {0}")]
    StartFailed(String),
    /// The library claims one tag id twice.
    #[error("duplicate tag id {tag_id}: {} provides it twice", other.display())]
    DuplicateTagId {
        /// The tag id.
        tag_id: u32,
        /// The file.
        other: PathBuf,
    },
    /// The tag id belongs to another plugin (recorded in the store).
    #[error("tag id {tag_id} belongs to plugin {owner}; this file's plugin {plugin} claims it: the owner keeps it (transfer it with POST /api/v1/tags/{tag_id}/owner)")]
    OwnedByOther {
        /// The tag id.
        tag_id: u32,
        /// Its recorded owner.
        owner: String,
        /// The plugin of this file.
        plugin: String,
    },
    /// Several files claim a tag id that has no recorded owner.
    #[error("tag id {tag_id} is claimed by {} and has no recorded owner: none of them is loaded (remove all but one, or record an owner with POST /api/v1/tags/{tag_id}/owner)", files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(" and "))]
    ContestedTagId {
        /// The tag id.
        tag_id: u32,
        /// Every file claiming it.
        files: Vec<PathBuf>,
    },
}

/// Whose directory a path fault is on: what would be moved elsewhere when
/// it cannot be fixed where it is.
#[derive(Clone, Copy)]
enum Subject {
    /// A plugin library's path.
    Plugins,
    /// The private copies directory's path.
    Copies,
}

impl Subject {
    /// The safe way out when the fault is not this user's to fix in place.
    fn elsewhere(self) -> &'static str {
        match self {
            Subject::Plugins => "copy the plugins into a directory of your own that no one else can write (mode 0755 or stricter, all the way up) and pass it as --plugins-dir",
            Subject::Copies => "pass --plugin-copies-dir (TAG_PLUGIN_COPIES_DIR) a directory of your own whose parents no one else can write",
        }
    }
}

/// The message for an ownership or permission fault on a path, ending in
/// the one safe fix: `chmod go-w` only for the user's own non-sticky
/// directory or file (never a shared one like /tmp), else moving away.
fn path_fault(rejection: &Rejection, subject: Subject) -> String {
    let fix = |path: &Path, owner: u32, server_uid: u32| match owner == server_uid {
        true => format!("`chmod go-w {}`", path.display()),
        false => subject.elsewhere().to_string(),
    };
    match rejection {
        Rejection::WritableFile { file, mode, owner, server_uid } => format!(
            "{} is writable by group or others (mode {mode:o}); plugins run as trusted native code: {}",
            file.display(),
            fix(file, *owner, *server_uid)
        ),
        Rejection::WritableDirectory { dir, mode, owner, server_uid } => format!(
            "{} is writable by group or others (mode {mode:o}) and not sticky, so they can replace what is in it; no directory on the way may be: {}",
            dir.display(),
            fix(dir, *owner, *server_uid)
        ),
        Rejection::ForeignOwner { path, uid, server_uid } => format!(
            "{} belongs to uid {uid}; it and every directory on the way to it must belong to root or to this server's user (uid {server_uid}): {}",
            path.display(),
            subject.elsewhere()
        ),
        Rejection::ReplaceableEntry { entry, uid, dir, mode, server_uid } => format!(
            "{} belongs to uid {uid} and is in {}, which others can write (mode {mode:o}): the sticky bit lets its owner replace it, so it must belong to root or to this server's user (uid {server_uid}): {}",
            entry.display(),
            dir.display(),
            subject.elsewhere()
        ),
        other => other.to_string(),
    }
}
