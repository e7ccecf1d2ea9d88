//! The collectives of [`super::World`] through MPI (the `mpi` crate): `MPI_COMM_WORLD`, the
//! node-local ranks from `MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)`, and reductions, broadcasts
//! and aborts in pieces of at most 2³⁰ elements (MPI counts are 32-bit).

use super::World;
use crate::error::{Error, Result};
use ::mpi::collective::SystemOperation;
use ::mpi::environment::Universe;
use ::mpi::topology::SimpleCommunicator;
use ::mpi::traits::{Communicator, CommunicatorCollectives, Root};
use ::mpi::Threading;

/// The most elements one MPI call moves.
const PIECE: usize = 1 << 30;

fn comm() -> SimpleCommunicator {
    SimpleCommunicator::world()
}

/// Initialises MPI (only the main thread calls it) and reads this process's place in the job.
pub(super) fn initialize() -> Result<(Universe, World)> {
    let (universe, _) = ::mpi::initialize_with_threading(Threading::Funneled).ok_or_else(|| {
        Error::Backend("MPI: cannot initialise (MPI_Init_thread failed or ran before)".into())
    })?;
    let world = universe.world();
    let node = world.split_shared(world.rank());
    let w = World::new(
        world.rank() as usize,
        world.size() as usize,
        node.rank() as usize,
    );
    Ok((universe, w))
}

pub(super) fn min_u64(v: u64) -> Result<u64> {
    let mut out = 0u64;
    comm().all_reduce_into(&v, &mut out, SystemOperation::min());
    Ok(out)
}

pub(super) fn all_gather_u64(v: u64, size: usize) -> Result<Vec<u64>> {
    let mut all = vec![0u64; size];
    comm().all_gather_into(&v, &mut all[..]);
    Ok(all)
}

pub(super) fn max_f64(v: f64) -> Result<f64> {
    let mut out = 0f64;
    comm().all_reduce_into(&v, &mut out, SystemOperation::max());
    Ok(out)
}

pub(super) fn sum_f32(values: &[f32], sums: &mut [f32]) -> Result<()> {
    let c = comm();
    for (send, recv) in values.chunks(PIECE).zip(sums.chunks_mut(PIECE)) {
        c.all_reduce_into(send, recv, SystemOperation::sum());
    }
    Ok(())
}

pub(super) fn sum_u64(values: &mut [u64]) -> Result<()> {
    let c = comm();
    for piece in values.chunks_mut(PIECE) {
        let send = piece.to_vec();
        c.all_reduce_into(&send[..], piece, SystemOperation::sum());
    }
    Ok(())
}

pub(super) fn broadcast(buf: &mut [u8], root: usize) -> Result<()> {
    let c = comm();
    let from = c.process_at_rank(root as i32);
    for piece in buf.chunks_mut(PIECE) {
        from.broadcast_into(piece);
    }
    Ok(())
}

pub(super) fn abort(code: i32) -> ! {
    comm().abort(code)
}
