//! Memory a command is about to need, checked before it allocates. Sizes are computed with
//! checked arithmetic and compared with the memory the process can get: the least of the
//! system's `MemAvailable` (`/proc/meminfo`), the address-space limit (`ulimit -v`, less what the
//! process maps already) and the cgroup's memory limit (less its usage), whichever exist; where
//! none does, only sizes beyond what a process can address are refused. A request too large to
//! fit is a one-line error naming its cause and the limit, never an abort on a failed
//! allocation.

use crate::error::{Error, Result};
use std::path::Path;

/// Bytes of an array of `dims` values of `elem` bytes each; `None` when the product overflows.
pub fn array(dims: &[usize], elem: usize) -> Option<u64> {
    dims.iter()
        .try_fold(elem as u64, |a, &d| a.checked_mul(d as u64))
}

/// The sum of `parts`; `None` when one of them is `None` or the sum overflows.
pub fn sum(parts: &[Option<u64>]) -> Option<u64> {
    parts.iter().try_fold(0u64, |a, p| a.checked_add((*p)?))
}

/// Bytes of memory the system can give to new allocations now (`MemAvailable`), if it says.
fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    kib_field(&text, "MemAvailable:")
}

/// The value of a `/proc` line `key  N kB`, in bytes.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Room left under the address-space limit (`RLIMIT_AS`, `ulimit -v`): the limit less what the
/// process maps already (`VmSize` of `/proc/self/status`) and a margin of 64 MiB for the
/// allocator and the libraries; `None` without a limit.
#[cfg(unix)]
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every platform
fn address_space_room() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the limit into `lim`, a valid rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    let mapped = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| kib_field(&t, "VmSize:"))
        .unwrap_or(0);
    Some(
        (lim.rlim_cur as u64)
            .saturating_sub(mapped)
            .saturating_sub(64 << 20),
    )
}

#[cfg(not(unix))]
fn address_space_room() -> Option<u64> {
    None
}

/// Room left under the cgroup's memory limits: the least of `memory.max − memory.current`
/// (cgroup v2) or `memory.limit_in_bytes − memory.usage_in_bytes` (v1) over the process's cgroup
/// (`/proc/self/cgroup`) and the groups above it; `None` without a limit.
fn cgroup_room() -> Option<u64> {
    let read =
        |path: &Path| -> Option<u64> { std::fs::read_to_string(path).ok()?.trim().parse().ok() };
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut room: Option<u64> = None;
    for line in own.lines() {
        // `0::/path` (v2) or `N:memory,…:/path` (v1).
        let mut parts = line.splitn(3, ':');
        let (_, controllers, rel) = (parts.next(), parts.next(), parts.next());
        let (Some(controllers), Some(rel)) = (controllers, rel) else {
            continue;
        };
        let (root, limit, usage) = if controllers.is_empty() {
            ("/sys/fs/cgroup", "memory.max", "memory.current")
        } else if controllers.split(',').any(|c| c == "memory") {
            (
                "/sys/fs/cgroup/memory",
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
            )
        } else {
            continue;
        };
        let mut dir = Path::new(root).join(rel.trim_start_matches('/'));
        loop {
            // "max" (v2) does not parse: no limit; v1 reports no limit as a huge number.
            if let Some(max) = read(&dir.join(limit)).filter(|&m| m < 1 << 62) {
                let left = max.saturating_sub(read(&dir.join(usage)).unwrap_or(0));
                room = Some(room.map_or(left, |r| r.min(left)));
            }
            if dir == Path::new(root) || !dir.pop() {
                break;
            }
        }
    }
    room
}

/// Bytes of memory this process can get now, and the limit that says so: the least of the
/// system's available memory, the room under the address-space limit and the room under the
/// cgroup's memory limit, whichever exist.
pub fn available() -> Option<(u64, &'static str)> {
    [
        mem_available().map(|b| (b, "to the system (MemAvailable)")),
        address_space_room().map(|b| {
            (
                b,
                "under the address-space limit (ulimit -v) less what is mapped",
            )
        }),
        cgroup_room().map(|b| (b, "under the cgroup's memory limit less its usage")),
    ]
    .into_iter()
    .flatten()
    .min_by_key(|&(b, _)| b)
}

/// A byte count for messages, in binary units: `3.0 TiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Refuses `need` bytes (`None`: more than 2^64) when they cannot fit: more than the system has
/// available, or more than one process can address. `what` names the flags and arrays that need
/// them, and starts the message.
pub fn ensure(what: &str, need: Option<u64>) -> Result<()> {
    let Some(need) = need else {
        return Err(Error::Invalid(format!(
            "{what}: needs more than 2^64 bytes of memory"
        )));
    };
    if need > isize::MAX as u64 {
        return Err(Error::Invalid(format!(
            "{what}: needs {} of memory, more than a process can address",
            human(need)
        )));
    }
    match available() {
        Some((avail, limit)) if need > avail => Err(Error::Invalid(format!(
            "{what}: needs {} of memory, but {} is available {limit}",
            human(need),
            human(avail)
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_checked_arithmetic() {
        assert_eq!(array(&[2, 3, 4], 4), Some(96));
        assert_eq!(array(&[], 4), Some(4));
        assert_eq!(array(&[usize::MAX, usize::MAX], 4), None);
        assert_eq!(sum(&[Some(1), Some(2)]), Some(3));
        assert_eq!(sum(&[Some(1), None]), None);
        assert_eq!(sum(&[Some(u64::MAX), Some(1)]), None);
    }

    #[test]
    fn too_large_is_refused_with_the_size() {
        let e = ensure("--members 9", None).unwrap_err().to_string();
        assert!(e.starts_with("--members 9:") && e.contains("2^64"), "{e}");
        let e = ensure("--batch 9", Some(u64::MAX / 2))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--batch 9") && e.contains("8.0 EiB"), "{e}");
        assert!(ensure("small", Some(1024)).is_ok());
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(10), "10 bytes");
    }

    #[test]
    fn available_is_the_least_limit() {
        if let Some((avail, limit)) = available() {
            for room in [mem_available(), address_space_room(), cgroup_room()] {
                assert!(room.is_none_or(|r| avail <= r), "{avail} {limit}");
            }
            assert!(!limit.is_empty());
        }
        assert_eq!(
            kib_field("A: 1\nVmSize:\t  12 kB\n", "VmSize:"),
            Some(12 * 1024)
        );
        assert_eq!(kib_field("A: 1\n", "VmSize:"), None);
    }
}
