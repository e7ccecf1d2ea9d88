//! NumPy `.npz` archives holding one array (docs/data.md, “NumPy archives”): a zip file (as
//! `np.savez` or `np.savez_compressed` writes it, zip64 included) whose single member is an `.npy`
//! file, stored or deflated. The member is found through the central directory, inflated and
//! checked against its CRC-32, then parsed by [`super::npy`].

use crate::error::{Error, Result};
use std::path::Path;

const EOCD: u32 = 0x0605_4b50;
const ZIP64_EOCD: u32 = 0x0606_4b50;
const ZIP64_LOCATOR: u32 = 0x0706_4b50;
const CENTRAL: u32 = 0x0201_4b50;
const LOCAL: u32 = 0x0403_4b50;

/// Whether `bytes` start like a zip archive: a member's local header, or the end record of an
/// archive with no members (what `np.savez` writes when given no array).
pub fn is_zip(bytes: &[u8]) -> bool {
    matches!(u32le(bytes, 0), Some(LOCAL | EOCD))
}

fn u16le(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32le(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64le(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// One member of the archive, from its central directory entry.
struct Member {
    name: String,
    method: u16,
    crc: u32,
    compressed: u64,
    size: u64,
    offset: u64,
}

/// The central directory: (entry count, its offset).
fn directory(b: &[u8]) -> Option<(u64, u64)> {
    // The end record is 22 bytes plus a comment of up to 64 KiB.
    let lo = b.len().saturating_sub(22 + 65_535);
    let at = (lo..=b.len().checked_sub(22)?)
        .rev()
        .find(|&i| u32le(b, i) == Some(EOCD))?;
    let (count, offset) = (u16le(b, at + 10)?, u32le(b, at + 16)?);
    if count != 0xFFFF && offset != 0xFFFF_FFFF {
        return Some((u64::from(count), u64::from(offset)));
    }
    // zip64: the locator sits just before the end record and points at the zip64 end record.
    let loc = at.checked_sub(20)?;
    if u32le(b, loc)? != ZIP64_LOCATOR {
        return None;
    }
    let z = usize::try_from(u64le(b, loc + 8)?).ok()?;
    if u32le(b, z)? != ZIP64_EOCD {
        return None;
    }
    Some((u64le(b, z + 32)?, u64le(b, z + 48)?))
}

fn members(b: &[u8]) -> Option<Vec<Member>> {
    let (count, offset) = directory(b)?;
    let mut at = usize::try_from(offset).ok()?;
    let mut out = Vec::new();
    for _ in 0..count {
        if u32le(b, at)? != CENTRAL {
            return None;
        }
        let method = u16le(b, at + 10)?;
        let crc = u32le(b, at + 16)?;
        let mut compressed = u64::from(u32le(b, at + 20)?);
        let mut size = u64::from(u32le(b, at + 24)?);
        let (nlen, xlen, clen) = (
            usize::from(u16le(b, at + 28)?),
            usize::from(u16le(b, at + 30)?),
            usize::from(u16le(b, at + 32)?),
        );
        let mut offset = u64::from(u32le(b, at + 42)?);
        let name = String::from_utf8_lossy(b.get(at + 46..at + 46 + nlen)?).into_owned();
        // zip64 extra field (id 1): 64-bit values for the fields that hold 0xFFFFFFFF, in order.
        let extra = b.get(at + 46 + nlen..at + 46 + nlen + xlen)?;
        let mut e = 0;
        while e + 4 <= extra.len() {
            let (id, len) = (u16le(extra, e)?, usize::from(u16le(extra, e + 2)?));
            if id == 1 {
                let mut f = e + 4;
                for v in [&mut size, &mut compressed, &mut offset] {
                    if *v == 0xFFFF_FFFF {
                        *v = u64le(extra, f)?;
                        f += 8;
                    }
                }
            }
            e += 4 + len;
        }
        out.push(Member {
            name,
            method,
            crc,
            compressed,
            size,
            offset,
        });
        at += 46 + nlen + xlen + clen;
    }
    Some(out)
}

/// The `.npy` bytes of the single member of an `.npz` archive.
pub fn single_member(path: &Path, b: &[u8]) -> Result<Vec<u8>> {
    let bad = |m: &str| Error::bad_file(path, m.to_string());
    let list = members(b)
        .ok_or_else(|| bad("not a readable .npz archive (truncated or corrupt zip directory)"))?;
    let m = match list.as_slice() {
        [m] => m,
        [] => return Err(bad("the .npz archive holds no array; expected one")),
        many => {
            let names: Vec<&str> = many.iter().map(|m| m.name.as_str()).collect();
            return Err(bad(&format!(
                "the .npz archive holds {} arrays ({}); expected one",
                many.len(),
                names.join(", ")
            )));
        }
    };
    let at = usize::try_from(m.offset).map_err(|_| bad("zip member offset out of range"))?;
    if u32le(b, at) != Some(LOCAL) {
        return Err(bad("not a readable .npz archive (bad local header)"));
    }
    let (nlen, xlen) = (
        usize::from(u16le(b, at + 26).unwrap_or(0)),
        usize::from(u16le(b, at + 28).unwrap_or(0)),
    );
    let start = at + 30 + nlen + xlen;
    let data = usize::try_from(m.compressed)
        .ok()
        .and_then(|c| b.get(start..start.checked_add(c)?))
        .ok_or_else(|| bad("the .npz archive is truncated"))?;
    crate::memory::ensure(
        &format!("{}: the .npz member {}", path.display(), m.name),
        Some(m.size),
    )?;
    // At most isize::MAX after the check above.
    let size = m.size as usize;
    let out = match m.method {
        0 => data.to_vec(),
        8 => miniz_oxide::inflate::decompress_to_vec_with_limit(data, size)
            .map_err(|e| bad(&format!("the .npz member {} does not inflate: {e:?}", m.name)))?,
        other => {
            return Err(bad(&format!(
                "the .npz member {} uses zip compression method {other}; expected stored (0) or deflate (8)",
                m.name
            )))
        }
    };
    if out.len() as u64 != m.size || crc32fast::hash(&out) != m.crc {
        return Err(bad(&format!(
            "the .npz member {} fails its size or CRC check (corrupt archive)",
            m.name
        )));
    }
    Ok(out)
}
