//! Opt-in per-operation timing, for `dydiff bench`: wall time and FLOPs summed by operation
//! name. Off by default; when off, a scope costs one relaxed atomic load.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<BTreeMap<&'static str, OpTotal>> = Mutex::new(BTreeMap::new());

/// Time and work summed over every call of one operation.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpTotal {
    pub calls: u64,
    pub seconds: f64,
    pub flops: f64,
}

/// Turns recording on or off and clears what was recorded.
pub fn enable(on: bool) {
    TOTALS.lock().unwrap_or_else(|e| e.into_inner()).clear();
    ENABLED.store(on, Ordering::Relaxed);
}

/// What was recorded since [`enable`].
pub fn totals() -> BTreeMap<&'static str, OpTotal> {
    TOTALS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Records the time from its creation to its drop under `name`.
pub struct Scope {
    name: &'static str,
    flops: f64,
    start: Option<Instant>,
}

/// Starts timing one call of `name` doing `flops` floating-point operations.
pub fn scope(name: &'static str, flops: f64) -> Scope {
    let start = ENABLED.load(Ordering::Relaxed).then(Instant::now);
    Scope { name, flops, start }
}

impl Drop for Scope {
    fn drop(&mut self) {
        if let Some(start) = self.start {
            let mut t = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
            let e = t.entry(self.name).or_default();
            e.calls += 1;
            e.seconds += start.elapsed().as_secs_f64();
            e.flops += self.flops;
        }
    }
}
