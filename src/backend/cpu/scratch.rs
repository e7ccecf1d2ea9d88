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

/// Workspace buffers shared by the threads of one kernel (Winograd tiles, padded copies),
/// returned here after use: allocating them afresh each call cost a page fault per 4 KiB
/// (1.8–3.6 thousand faults, 3–5 ms, per 64-channel 32×32 convolution backward at batch 8).
static POOL: std::sync::Mutex<Vec<Vec<f32>>> = std::sync::Mutex::new(Vec::new());

/// At most this many buffers wait in the pool; the rest are freed.
const POOL_MAX: usize = 8;

/// A buffer of `len` values from the pool (contents unspecified: callers write before they
/// read), given back when dropped. The vector keeps its longest length; `len` is the part lent.
pub struct Workspace(Vec<f32>, usize);

impl Workspace {
    pub fn new(len: usize) -> Workspace {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        // The smallest buffer that is large enough, else the largest (grown below).
        let pick = (0..pool.len())
            .filter(|&i| pool[i].len() >= len)
            .min_by_key(|&i| pool[i].len())
            .or_else(|| (0..pool.len()).max_by_key(|&i| pool[i].len()));
        let mut v = pick.map(|i| pool.swap_remove(i)).unwrap_or_default();
        drop(pool);
        if v.len() < len {
            v.resize(len, 0.0);
        }
        Workspace(v, len)
    }
}

impl std::ops::Deref for Workspace {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.0[..self.1]
    }
}

impl std::ops::DerefMut for Workspace {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.0[..self.1]
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOL_MAX {
            pool.push(v);
        }
    }
}
