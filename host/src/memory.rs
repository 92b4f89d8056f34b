//! The memory limit a run keeps within: sizes as people write them
//! (`512MiB`, `2GiB`, `1.5GB`), the machine's memory, and the default
//! limit, a share of it.

use std::fmt;
use std::str::FromStr;

/// The default limit's share of the machine's memory: runs share the machine
/// with the store, the page cache and other tasks.
const DEFAULT_SHARE: f64 = 0.2;
/// The smallest default (on a very small machine).
const DEFAULT_FLOOR: u64 = 256 << 20;

/// A number of bytes, parsed from `512MiB`, `2GiB`, `1.5GB`, `800000`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::disk::human_bytes(self.0))
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<ByteSize, String> {
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(split);
        let invalid = || {
            format!("\"{text}\" is not a size: write a number and a unit, such as 512MiB, 2GiB or 1.5GB")
        };
        let value: f64 = number.parse().map_err(|_| invalid())?;
        let scale = unit_scale(unit.trim()).ok_or_else(invalid)?;
        let bytes = value * scale as f64;
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err(format!("\"{text}\" is too large a size"));
        }
        Ok(ByteSize(bytes as u64))
    }
}

/// Bytes per unit: binary for `KiB`/`K`, decimal for `KB`.
fn unit_scale(unit: &str) -> Option<u64> {
    let scale = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return None,
    };
    Some(scale)
}

/// The memory this process may use: the machine's, or less when a cgroup
/// (a container) limits it; `None` where neither can be read.
pub fn machine_memory() -> Option<u64> {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| meminfo_total(&text));
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok());
    match (total, cgroup) {
        (Some(t), Some(c)) => Some(t.min(c)),
        (t, c) => t.or(c),
    }
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The limit when none is set: a fifth of the machine's memory (at least
/// 256 MiB; 2 GiB where the machine's memory cannot be read).
pub fn default_limit() -> ByteSize {
    default_for(machine_memory())
}

fn default_for(memory: Option<u64>) -> ByteSize {
    match memory {
        Some(bytes) => ByteSize(((bytes as f64 * DEFAULT_SHARE) as u64).max(DEFAULT_FLOOR)),
        None => ByteSize(2 << 30),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_with_binary_and_decimal_units() {
        let size = |text: &str| text.parse::<ByteSize>().map(ByteSize::bytes);
        assert_eq!(size("512MiB"), Ok(512 << 20));
        assert_eq!(size("2GiB"), Ok(2 << 30));
        assert_eq!(size("2 gib"), Ok(2 << 30));
        assert_eq!(size("8M"), Ok(8 << 20));
        assert_eq!(size("1.5GB"), Ok(1_500_000_000));
        assert_eq!(size("800000"), Ok(800_000));
        let error = size("lots").unwrap_err();
        assert!(error.contains("512MiB"), "{error}");
        assert!(size("2 parsecs").is_err());
        assert!(size("").is_err());
    }

    #[test]
    fn the_default_is_a_fifth_of_memory_with_a_floor() {
        assert_eq!(default_for(Some(10 << 30)), ByteSize(2 << 30));
        assert_eq!(default_for(Some(100 << 20)), ByteSize(256 << 20));
        assert_eq!(default_for(None), ByteSize(2 << 30));
        let text = "MemTotal:       24572368 kB\nMemFree: 1 kB\n";
        assert_eq!(meminfo_total(text), Some(24_572_368 * 1024));
    }
}
