//! Per-thread scratch buffers for kernels that need workspace (im2col columns, Winograd tiles,
//! attention score blocks). Kept for the life of the thread, so a kernel task neither allocates
//! nor zero-fills megabytes each time it runs. The closures given here must not start rayon
//! work themselves (they would borrow the same buffers again).

use std::cell::RefCell;

thread_local! {
    static BUFFERS: RefCell<[Vec<f32>; 2]> = const { RefCell::new([Vec::new(), Vec::new()]) };
}

/// Runs `f` with two buffers of at least `a` and `b` elements. Their contents are unspecified
/// (whatever the previous user left): callers write before they read.
pub fn with2<R>(a: usize, b: usize, f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    BUFFERS.with(|cell| {
        let mut bufs = cell.borrow_mut();
        let [x, y] = &mut *bufs;
        if x.len() < a {
            x.resize(a, 0.0);
        }
        if y.len() < b {
            y.resize(b, 0.0);
        }
        f(&mut x[..a], &mut y[..b])
    })
}

/// Runs `f` with one buffer of at least `len` elements, contents unspecified.
pub fn with1<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    with2(len, 0, |x, _| f(x))
}

/// A zero-filled vector of `n` values, filled by all threads when large (a single-threaded
/// fill of each op's output was several percent of a UNet forward).
pub fn zeroed(n: usize) -> Vec<f32> {
    use rayon::prelude::*;
    if n < (1 << 18) {
        return vec![0.0; n];
    }
    let mut v = Vec::with_capacity(n);
    v.par_extend(rayon::iter::repeat_n(0.0f32, n));
    v
}
