//! Finding, verifying and loading tag plugin libraries, for every program
//! that runs tag plugins (tag-server, and the Spark module `tag_engine_spark`)
//! with the same checks:
//!
//! - [`trust`]: before any `dlopen`, the file's ownership and permissions
//!   (as sshd's StrictModes), its ELF structure, and the private copy named
//!   by its SHA-256 that is what gets loaded;
//! - [`load_dir_with`] / [`load_file_alone`]: the abi_stable header load,
//!   the plugin-api version and layout check, and the tag-id ownership rules
//!   across the files of one scan, each file ending [`Outcome::Loaded`] or
//!   [`Outcome::Rejected`] with a [`Rejection`] a person can act on;
//! - [`registry`]: the loaded tags, each call into a plugin checked (error,
//!   caught panic, mask of the wrong length) and turned into a
//!   [`TagFailure`] of that tag only.
//!
//! Where the private copies go by default is the program's choice: every
//! function here takes the copies directory.

pub mod registry;
pub mod rejection;
mod scan;
pub mod trust;

pub use registry::{PluginIdentity, RegisteredTag, TagFailure, TagRegistry};
pub use rejection::Rejection;
pub use scan::{
    load_dir_with, load_file_alone, now_timestamp, LoadReport, LoadedPlugin, Outcome, PluginFile,
    ScanError,
};
