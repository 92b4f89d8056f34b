//! Who holds a task's lease: the name a worker pool writes on the tasks it
//! claims, `<host>-<pid>-<start>-<instance>`.
//!
//! - `host`: 12 hex digits of the SHA-256 of the host name, the kernel's
//!   boot id and the process id namespace, so two machines (or two
//!   containers on one kernel, or one machine before and after a reboot)
//!   never share it;
//! - `pid` and `start` (the process's start time in clock ticks since boot,
//!   `/proc/<pid>/stat`): together they name one process, even after its
//!   pid is reused;
//! - `instance`: one pool among several in a process (tests run many).
//!
//! A process can tell from an owner whether it is a dead process of its own
//! host (same `host`, and no process with that pid and start time): such a
//! process's leases are void at once, while any other owner's lease (a
//! live process, another host, an owner written by an older version) is
//! left to expire.

use sha2::{Digest, Sha256};
use std::sync::OnceLock;

/// A lease owner, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The host key (12 hex digits).
    pub host: String,
    /// The process id.
    pub pid: u32,
    /// The process's start time (clock ticks since boot).
    pub start: u64,
    /// The pool within the process.
    pub instance: String,
}

impl Owner {
    /// A new owner for a pool of this process.
    pub fn this_process() -> Owner {
        let pid = std::process::id();
        Owner {
            host: host_key().to_string(),
            pid,
            start: process(pid).map_or(0, |(_, start)| start),
            instance: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
        }
    }

    /// Parses an owner as written by [`Owner::to_string`]; `None` for any
    /// other text (such as an owner written by an older version).
    pub fn parse(text: &str) -> Option<Owner> {
        let mut parts = text.split('-');
        let host = parts.next()?;
        let pid = parts.next()?.parse().ok()?;
        let start = parts.next()?.parse().ok()?;
        let instance = parts.next()?;
        let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
        if parts.next().is_some() || host.len() != 12 || !hex(host) || !hex(instance) {
            return None;
        }
        Some(Owner {
            host: host.to_string(),
            pid,
            start,
            instance: instance.to_string(),
        })
    }

    /// Whether `other` names a process of this owner's host that is no
    /// longer alive. False when that cannot be known for sure (no start
    /// time to compare, no `/proc`).
    pub fn outlived(&self, other: &Owner) -> bool {
        if other.host != self.host || other.start == 0 || self.start == 0 {
            return false;
        }
        match process(other.pid) {
            // The pid is in use: by that process (perhaps a zombie now), or
            // by a new one.
            Some((state, start)) => start != other.start || matches!(state, 'Z' | 'X'),
            None => proc_mounted() && !pid_exists(other.pid),
        }
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}-{}-{}-{}",
            self.host, self.pid, self.start, self.instance
        )
    }
}

/// This host's key: see the module's documentation.
pub fn host_key() -> &'static str {
    static KEY: OnceLock<String> = OnceLock::new();
    KEY.get_or_init(|| {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let namespace = std::fs::read_link("/proc/self/ns/pid")
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let mut hash = Sha256::new();
        for part in [
            read("/proc/sys/kernel/hostname"),
            read("/proc/sys/kernel/random/boot_id"),
            namespace,
        ] {
            hash.update(part.trim().as_bytes());
            hash.update([0]);
        }
        hash.finalize()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    })
}

/// The state and start time (clock ticks since boot) of process `pid`
/// (fields 3 and 22 of `/proc/<pid>/stat`), if there is such a process.
fn process(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold anything.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.nth(18)?.parse().ok()?))
}

fn proc_mounted() -> bool {
    std::path::Path::new("/proc/self/stat").exists()
}

/// Whether a process `pid` exists (signal 0 checks without sending).
fn pid_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 sends nothing; it only checks the pid.
    let found = unsafe { libc::kill(pid, 0) } == 0;
    found || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_reads_back_and_other_text_is_no_owner() {
        let me = Owner::this_process();
        assert_eq!(Owner::parse(&me.to_string()), Some(me.clone()));
        assert!(me.to_string().len() <= 64, "fits MySQL's owner column");
        for text in [
            "",
            "4242-0a1b2c3d4e5f",
            "xyz-1-2-abc",
            "0123456789ab-1-2-abc-d",
        ] {
            assert_eq!(Owner::parse(text), None, "{text}");
        }
    }

    #[test]
    fn only_a_dead_process_of_this_host_is_outlived() {
        let me = Owner::this_process();
        assert!(me.start > 0, "this process has a start time");
        assert!(!me.outlived(&me), "a live process");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let dead = Owner {
            pid,
            start: process(pid).unwrap().1,
            ..me.clone()
        };
        assert!(!me.outlived(&dead), "a live process of this host");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(me.outlived(&dead), "a process of this host that ended");
        let reused = Owner {
            start: me.start + 1,
            ..me.clone()
        };
        assert!(me.outlived(&reused), "its pid now names another process");
        let elsewhere = Owner {
            host: "000000000000".into(),
            ..dead.clone()
        };
        assert!(!me.outlived(&elsewhere), "another host's process");
    }
}
