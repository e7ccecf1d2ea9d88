//! Many processes (docs/distributed.md): the ranks of a job started by an MPI launcher
//! (`mpirun`, `mpiexec`, Slurm's `srun`), what each rank does of a command, and the few
//! collectives dydiff needs — a sum of float32 arrays (the gradients of a training step), a
//! gather (the forecasts of sharded sampling), a byte broadcast (NCCL's unique id) and an
//! agreement on errors.
//!
//! Built with the `mpi` feature, a process started by a launcher initialises MPI and becomes one
//! rank of [`world`]; without the feature, or started without a launcher, it is the one rank of a
//! world of one and every collective is the identity. A build without the feature refuses to run
//! as one of several ranks (every rank would do the whole job and write the same files).
//!
//! Errors. [`World::agree`] is called by every rank at the same point of a command: if any rank
//! failed, the lowest failing rank returns its error as [`Error::OnRank`] (printed by the binary)
//! and every other rank [`Error::OtherRank`] (printed by no one), so that an error all ranks meet
//! is reported once. An error outside an agreement ends the job with [`World::abort`].

#[cfg(feature = "mpi")]
mod mpi;

use crate::error::{Error, Result};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// Calls the MPI implementation of a collective (only reachable with more than one rank, which a
/// build without MPI never has).
macro_rules! mpi_call {
    ($f:ident($($a:expr),*)) => {{
        #[cfg(feature = "mpi")]
        let r: Result<_> = mpi::$f($($a),*);
        #[cfg(not(feature = "mpi"))]
        let r: Result<_> = {
            $(let _ = $a;)*
            Err(Error::Backend("a collective without MPI".into()))
        };
        r
    }};
}

/// The environment variables by which launchers tell a process its rank and the job's size:
/// Open MPI's `mpirun`, PMI (MPICH's Hydra, MVAPICH, Slurm's `--mpi=pmi2`), PMIx, and Slurm's
/// `srun` itself.
const LAUNCHERS: [(&str, &str); 4] = [
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
    ("PMI_RANK", "PMI_SIZE"),
    ("PMIX_RANK", "SLURM_STEP_NUM_TASKS"),
    ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS"),
];

/// What a launcher told this process: its rank, the job's size (if the launcher says), and the
/// variable that said it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launcher {
    pub rank: usize,
    pub size: Option<usize>,
    pub variable: &'static str,
}

/// The launcher that started this process, read from `var` (the environment, or a stand-in in
/// tests); `None` for a process started by hand.
pub fn launcher_from(var: impl Fn(&str) -> Option<String>) -> Option<Launcher> {
    LAUNCHERS.iter().find_map(|&(rank, size)| {
        let r = var(rank)?.trim().parse().ok()?;
        let n = var(size).and_then(|s| s.trim().parse().ok());
        // Slurm sets SLURM_PROCID in a batch script too: only a step started by srun counts
        if rank == "SLURM_PROCID" && n.is_none() {
            return None;
        }
        Some(Launcher {
            rank: r,
            size: n,
            variable: rank,
        })
    })
}

/// The launcher that started this process, from the environment.
pub fn launcher() -> Option<Launcher> {
    launcher_from(|k| std::env::var(k).ok())
}

/// The processes of a job: this one's rank, their number, and this one's rank among those on its
/// node (which picks its GPU).
#[derive(Debug)]
pub struct World {
    rank: usize,
    size: usize,
    local_rank: usize,
    /// Whether the ranks are between collective sections ([`World::begin_collectives`]), where
    /// an error can still be agreed on.
    outside: AtomicBool,
}

static WORLD: OnceLock<World> = OnceLock::new();

/// The world this process belongs to: the one made by [`init`], or a world of one.
pub fn world() -> &'static World {
    WORLD.get_or_init(|| World::new(0, 1, 0))
}

/// Keeps MPI initialised while it lives (MPI is finalised when it drops): made by [`init`], held
/// by the binary for the whole command.
pub struct Membership {
    #[cfg(feature = "mpi")]
    _universe: Option<::mpi::environment::Universe>,
}

/// Joins the job this process was started in: with the `mpi` feature and a launcher, MPI is
/// initialised and [`world`] becomes the job's; otherwise the world is this process alone.
/// Refuses a build without the feature started as one of several ranks.
pub fn init() -> Result<Membership> {
    let launched = launcher();
    #[cfg(feature = "mpi")]
    {
        if let Some(l) = launched {
            let (universe, w) = mpi::initialize()?;
            // An MPI other than the launcher's makes every process a job of its own, each doing
            // the whole job: refused (MPI is finalised as `universe` drops).
            if let Some(size) = l.size.filter(|&s| s != w.size) {
                return Err(Error::Backend(format!(
                    "the launcher started {size} ranks ({} is set) but MPI sees a job of {}: this dydiff's MPI library is not the launcher's; start it with the mpirun of the MPI it was built with, or srun with the matching --mpi plugin (docs/distributed.md)",
                    l.variable, w.size
                )));
            }
            WORLD
                .set(w)
                .map_err(|_| Error::Backend("MPI: initialised twice".into()))?;
            return Ok(Membership {
                _universe: Some(universe),
            });
        }
        Ok(Membership { _universe: None })
    }
    #[cfg(not(feature = "mpi"))]
    {
        // one of several ranks: a size above 1, or a rank above 0 where the launcher gives none
        if let Some(l) = launched.filter(|l| l.size.map_or(l.rank > 0, |s| s > 1)) {
            let of = l.size.map_or(String::new(), |s| format!(" of {s}"));
            return Err(Error::Backend(format!(
                "started as rank {}{of} by an MPI launcher ({} is set), but this dydiff was built without MPI: rebuild with `cargo build --release --features mpi` (docs/distributed.md), or start one process",
                l.rank, l.variable
            )));
        }
        Ok(Membership {})
    }
}

/// A 64-bit FNV-1a hash of `bytes`, the same in every process: what ranks compare to find that
/// they hold the same value ([`World::check_same`]) or different ones.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The contiguous share of `n` items of rank `rank` of `size`: the first `n mod size` ranks get
/// one item more than the others.
pub fn share_of(n: usize, rank: usize, size: usize) -> Range<usize> {
    let (base, extra) = (n / size, n % size);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

impl World {
    fn new(rank: usize, size: usize, local_rank: usize) -> World {
        World {
            rank,
            size,
            local_rank,
            outside: AtomicBool::new(true),
        }
    }

    /// Starts a section of collectives (the steps of a training run, the batches of sharded
    /// sampling), after every rank's preparation `r`: [`World::agree`] on `r`. Until
    /// [`World::end_collectives`], an error on one rank cannot be agreed on (the others may be
    /// inside a collective) and ends the job ([`World::abort`]).
    pub fn begin_collectives<T>(&self, r: Result<T>) -> Result<T> {
        let v = self.agree(r)?;
        self.outside.store(false, Ordering::SeqCst);
        Ok(v)
    }

    /// Ends a section of collectives: every rank has left it at the same point.
    pub fn end_collectives(&self) {
        self.outside.store(true, Ordering::SeqCst);
    }

    /// Whether the ranks are between sections of collectives, where every rank's next collective
    /// is an agreement.
    pub fn outside_collectives(&self) -> bool {
        self.outside.load(Ordering::SeqCst)
    }

    /// This process's rank, `0 … size−1`.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks.
    pub fn size(&self) -> usize {
        self.size
    }

    /// This process's rank among the ranks on its node.
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// Whether this is rank 0, which alone writes files, logs and progress.
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// This rank's share of `n` items ([`share_of`]).
    pub fn share(&self, n: usize) -> Range<usize> {
        share_of(n, self.rank, self.size)
    }

    /// Every rank's share of `n` items, by rank.
    pub fn shares(&self, n: usize) -> Vec<Range<usize>> {
        (0..self.size).map(|r| share_of(n, r, self.size)).collect()
    }

    /// Every rank's share, by rank, of `n` items taken in batches of `batch` (the last one
    /// possibly short): whole batches, contiguous, so that each batch holds the same items as in
    /// a process of its own.
    pub fn batch_shares(&self, n: usize, batch: usize) -> Vec<Range<usize>> {
        self.shares(n.div_ceil(batch.max(1)))
            .into_iter()
            .map(|c| (c.start * batch).min(n)..(c.end * batch).min(n))
            .collect()
    }

    /// Called by every rank at the same point with its own outcome: `Ok` if every rank succeeded;
    /// otherwise the lowest failing rank gets its error as [`Error::OnRank`] (as is, in a world of
    /// one) and every other rank [`Error::OtherRank`].
    pub fn agree<T>(&self, r: Result<T>) -> Result<T> {
        if self.size == 1 {
            return r;
        }
        let mine = if r.is_err() { self.rank } else { self.size };
        let first = self.min_usize(mine)?;
        match r {
            Ok(v) if first == self.size => Ok(v),
            Err(e) if first == self.rank => Err(Error::OnRank {
                rank: self.rank,
                size: self.size,
                source: Box::new(e),
            }),
            _ => Err(Error::OtherRank),
        }
    }

    /// Refuses a job whose ranks hold different values `v` of `what` (every rank calls it at the
    /// same point): e.g. ranks started with different arguments would run different collectives
    /// and wait for each other for ever.
    pub fn check_same(&self, what: &str, v: u64) -> Result<()> {
        if self.size == 1 {
            return Ok(());
        }
        let low: u64 = mpi_call!(min_u64(v))?;
        let high_inverted: u64 = mpi_call!(min_u64(!v))?;
        let high = !high_inverted;
        if low != high {
            return Err(Error::Invalid(format!(
                "the {} ranks of the job have different {what}; expected every rank to be started alike",
                self.size
            )));
        }
        Ok(())
    }

    /// The smallest of every rank's `v`.
    pub fn min_usize(&self, v: usize) -> Result<usize> {
        if self.size == 1 {
            return Ok(v);
        }
        mpi_call!(min_u64(v as u64)).map(|m: u64| m as usize)
    }

    /// The sums over every rank of `values`, element by element (float32 sums in the MPI
    /// library's order: the same on every rank, not necessarily that of one process).
    pub fn sum_f32(&self, values: &[f32]) -> Result<Vec<f32>> {
        if self.size == 1 {
            return Ok(values.to_vec());
        }
        let mut sums = vec![0.0f32; values.len()];
        mpi_call!(sum_f32(values, &mut sums))?;
        Ok(sums)
    }

    /// The sums over every rank of `values` (u64), element by element.
    pub fn sum_u64(&self, values: &mut [u64]) -> Result<()> {
        if self.size == 1 {
            return Ok(());
        }
        mpi_call!(sum_u64(values))
    }

    /// Every rank's `v`, by rank.
    pub fn all_gather_u64(&self, v: u64) -> Result<Vec<u64>> {
        if self.size == 1 {
            return Ok(vec![v]);
        }
        let all: Vec<u64> = mpi_call!(all_gather_u64(v, self.size))?;
        Ok(all)
    }

    /// The largest of every rank's `v`.
    pub fn max_f64(&self, v: f64) -> Result<f64> {
        if self.size == 1 {
            return Ok(v);
        }
        let m: f64 = mpi_call!(max_f64(v))?;
        Ok(m)
    }

    /// Every rank's bytes `buf` replaced by rank `root`'s.
    pub fn broadcast(&self, buf: &mut [u8], root: usize) -> Result<()> {
        if self.size == 1 {
            return Ok(());
        }
        mpi_call!(broadcast(buf, root))
    }

    /// Makes `values`, items of `per` float32 values each, whole on every rank: rank `r` holds
    /// the correct items `parts[r]`, and after the call every rank holds every rank's items.
    pub fn all_gather_parts(
        &self,
        values: &mut [f32],
        parts: &[Range<usize>],
        per: usize,
    ) -> Result<()> {
        if self.size == 1 {
            return Ok(());
        }
        debug_assert_eq!(parts.len(), self.size);
        for (root, part) in parts.iter().enumerate() {
            let part = &mut values[part.start * per..part.end * per];
            let bytes: &mut [u8] = bytemuck::cast_slice_mut(part);
            mpi_call!(broadcast(bytes, root))?;
        }
        Ok(())
    }

    /// Ends every rank of the job at once (`MPI_Abort`), with exit status `code`; in a world of
    /// one, this process.
    pub fn abort(&self, code: i32) -> ! {
        #[cfg(feature = "mpi")]
        if self.size > 1 {
            mpi::abort(code)
        }
        std::process::exit(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_the_items_in_order() {
        for n in 0..20 {
            for size in 1..6 {
                let parts: Vec<_> = (0..size).map(|r| share_of(n, r, size)).collect();
                assert_eq!(parts[0].start, 0);
                assert_eq!(parts[size - 1].end, n);
                for w in parts.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                    assert!(w[0].len() >= w[1].len() && w[0].len() <= w[1].len() + 1);
                }
            }
        }
    }

    #[test]
    fn batch_shares_are_whole_batches() {
        let w = World::new(0, 3, 0);
        assert_eq!(w.batch_shares(10, 3), [0..6, 6..9, 9..10]);
        assert_eq!(w.batch_shares(4, 8), [0..4, 4..4, 4..4]);
        assert_eq!(w.batch_shares(9, 1), [0..3, 3..6, 6..9]);
    }

    #[test]
    fn launchers_are_read_from_their_variables() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(launcher_from(env(&[])), None);
        assert_eq!(
            launcher_from(env(&[
                ("OMPI_COMM_WORLD_RANK", "1"),
                ("OMPI_COMM_WORLD_SIZE", "4")
            ])),
            Some(Launcher {
                rank: 1,
                size: Some(4),
                variable: "OMPI_COMM_WORLD_RANK"
            })
        );
        assert_eq!(
            launcher_from(env(&[("SLURM_PROCID", "3"), ("SLURM_STEP_NUM_TASKS", "8")])),
            Some(Launcher {
                rank: 3,
                size: Some(8),
                variable: "SLURM_PROCID"
            })
        );
        assert_eq!(
            launcher_from(env(&[("PMI_RANK", "0")])).map(|l| l.size),
            Some(None)
        );
    }

    #[test]
    fn a_world_of_one_agrees_with_itself() {
        let w = world();
        assert_eq!((w.rank(), w.size(), w.is_root()), (0, 1, true));
        assert_eq!(w.share(7), 0..7);
        let e: Result<()> = w.agree(Err(Error::Invalid("x".into())));
        assert!(matches!(e, Err(Error::Invalid(_))));
        assert_eq!(w.sum_f32(&[1.0, 2.0]).unwrap(), [1.0, 2.0]);
        assert_eq!(w.all_gather_u64(7).unwrap(), [7]);
        assert_eq!(w.min_usize(3).unwrap(), 3);
        w.check_same("x", 1).unwrap();
    }
}
