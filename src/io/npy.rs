//! NumPy `.npy` files (format versions 1–3), the data format of docs/data.md, “NumPy files”: read
//! little-endian float32 (float64 and float16 are converted) in C order, also from a one-array
//! `.npz` ([`super::npz`]); write float32 atomically.

use crate::error::{Error, Result};
use crate::memory;
use std::path::Path;

const MAGIC: &[u8] = b"\x93NUMPY";

/// A float32 array read from or written to disk.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

fn header_field<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("'{key}':");
    let i = header.find(&pat)? + pat.len();
    Some(header[i..].trim_start())
}

fn parse_header(header: &str) -> std::result::Result<(String, bool, Vec<usize>), String> {
    let descr = header_field(header, "descr")
        .and_then(|s| s.strip_prefix('\''))
        .and_then(|s| s.split('\'').next())
        .ok_or("header has no 'descr'")?;
    let fortran = match header_field(header, "fortran_order")
        .ok_or("header has no 'fortran_order'")?
        .split([',', '}'])
        .next()
        .map(str::trim)
    {
        Some("True") => true,
        Some("False") => false,
        found => {
            return Err(format!(
                "'fortran_order' is {}; expected True or False",
                found.unwrap_or("")
            ))
        }
    };
    let shape_s = header_field(header, "shape")
        .and_then(|s| s.strip_prefix('('))
        .and_then(|s| s.split(')').next())
        .ok_or("header has no 'shape'")?;
    let shape = shape_s
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim_end_matches('L')
                .parse::<usize>()
                .map_err(|_| format!("bad shape entry {s:?}"))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok((descr.to_string(), fortran, shape))
}

/// Reads an `.npy` file, or an `.npz` archive holding one array, as float32.
pub fn read(path: &Path) -> Result<Array> {
    if let Ok(meta) = std::fs::metadata(path) {
        memory::ensure(
            &format!("{}: reading the file", path.display()),
            Some(meta.len()),
        )?;
    }
    let mut bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if super::npz::is_zip(&bytes) {
        bytes = super::npz::single_member(path, &bytes)?;
    }
    if bytes.is_empty() {
        return Err(Error::bad_file(
            path,
            "the file is empty (0 bytes); expected a NumPy .npy or .npz file",
        ));
    }
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(Error::bad_file(
            path,
            "not a NumPy .npy or .npz file (missing the \\x93NUMPY magic)",
        ));
    }
    let (hlen, hstart) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() < 12 => {
            return Err(Error::bad_file(path, "truncated .npy header"));
        }
        2 | 3 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => {
            return Err(Error::bad_file(
                path,
                format!("unsupported .npy format version {v}"),
            ))
        }
    };
    let header = bytes
        .get(hstart..hstart + hlen)
        .ok_or_else(|| Error::bad_file(path, "truncated .npy header"))?;
    let header = std::str::from_utf8(header)
        .map_err(|_| Error::bad_file(path, "the .npy header is not text"))?;
    let (descr, fortran, shape) = parse_header(header)
        .map_err(|m| Error::bad_file(path, format!("malformed .npy header: {m}")))?;
    if fortran {
        return Err(Error::bad_file(
            path,
            "array is in Fortran order; expected C order (save with np.ascontiguousarray)",
        ));
    }
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::bad_file(path, format!("shape {shape:?} is too large")))?;
    let (width, convert): (usize, fn(&[u8]) -> f32) = match descr.as_str() {
        "<f4" => (4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        "<f8" => (8, |b| {
            f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32
        }),
        "<f2" => (2, |b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        d => {
            return Err(Error::bad_file(
                path,
                format!("expected dtype float32 ('<f4'), found '{d}'"),
            ))
        }
    };
    let body = &bytes[hstart + hlen..];
    let need = count
        .checked_mul(width)
        .ok_or_else(|| Error::bad_file(path, format!("shape {shape:?} is too large")))?;
    if body.len() != need {
        return Err(Error::bad_file(
            path,
            format!(
                "shape {shape:?} needs {need} data bytes, found {} (truncated or corrupt)",
                body.len()
            ),
        ));
    }
    memory::ensure(
        &format!("{}: the array {shape:?} as float32", path.display()),
        memory::array(&shape, 4),
    )?;
    let data = body.chunks_exact(width).map(convert).collect();
    Ok(Array { shape, data })
}

/// The bytes of a version-1 `.npy` file holding float32 `data` of `shape`.
pub fn encode(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let dims = match shape.len() {
        1 => format!("{},", shape[0]),
        _ => shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({dims}), }}");
    let total = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Writes a float32 `.npy` file atomically.
pub fn write(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    super::atomic::write(path, &encode(shape, data))
}

/// Refuses non-finite values, naming their count and the first index.
pub fn check_finite(path: &Path, a: &Array) -> Result<()> {
    let bad = a.data.iter().filter(|v| !v.is_finite()).count();
    if let Some(first) = a.data.iter().position(|v| !v.is_finite()) {
        let mut idx = vec![0; a.shape.len()];
        let mut rem = first;
        for (i, d) in a.shape.iter().enumerate().rev() {
            idx[i] = rem % d;
            rem /= d;
        }
        return Err(Error::bad_file(
            path,
            format!("{bad} NaN or infinite values, the first at index {idx:?}"),
        ));
    }
    Ok(())
}
