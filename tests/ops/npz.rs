//! `.npz` archives with one array (docs/data.md, “NumPy archives”), as numpy writes them
//! (`python/make_npz_fixtures.py`): stored, deflated, float64; and the refusals.

use crate::common::{fixture, Scratch};
use dydiff::io::npy;

#[test]
fn npz_archives_read_like_npy() {
    let want = npy::read(&fixture("npz/array.npy")).unwrap();
    assert_eq!(want.shape, [2, 3, 2, 4, 5]);
    for name in ["stored.npz", "compressed.npz", "f64.npz"] {
        let got = npy::read(&fixture("npz").join(name)).unwrap();
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn bad_npz_archives_are_refused_by_name() {
    let e = npy::read(&fixture("npz/two.npz")).unwrap_err().to_string();
    assert!(
        e.contains("two.npz") && e.contains("2 arrays (obs.npy, truth.npy)"),
        "{e}"
    );
    let s = Scratch::new("npz");
    let bytes = std::fs::read(fixture("npz/stored.npz")).unwrap();
    let cut = s.path("cut.npz");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = npy::read(&cut).unwrap_err().to_string();
    assert!(e.contains("cut.npz") && e.contains("corrupt"), "{e}");
    // One flipped byte inside the stored array fails the CRC.
    let mut flipped = bytes.clone();
    flipped[400] ^= 0x40;
    let p = s.path("flipped.npz");
    std::fs::write(&p, &flipped).unwrap();
    let e = npy::read(&p).unwrap_err().to_string();
    assert!(e.contains("flipped.npz") && e.contains("CRC"), "{e}");
}
