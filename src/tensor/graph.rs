//! A repeated step as a CUDA graph (docs/devices.md, “CUDA graphs”): the first run of the step
//! runs eagerly (and fills the caching allocator), the second is captured and replayed, every
//! later one only copies its inputs into the captured input buffers and replays — one graph
//! launch instead of a host call per kernel. What changes from step to step must therefore be
//! the inputs' values (a timestep, the DDIM step's coefficients and noise key are tensors), never
//! a kernel's scalar argument or a shape.

use crate::backend::cuda::buffer::Buffer;
use crate::backend::cuda::gpu::{Gpu, GraphId};
use crate::backend::cuda::{self, CudaStorage};
use crate::backend::Storage;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::sync::Arc;

/// A step captured on one CUDA device, see the module documentation.
pub struct StepGraph {
    gpu: Arc<dyn Gpu>,
    runs: u64,
    captured: Option<Captured>,
}

/// A captured step: its graph and the buffers it reads and writes.
struct Captured {
    graph: GraphId,
    inputs: Vec<Tensor>,
    outputs: Vec<Tensor>,
}

/// The CUDA storage of `t`, or an error naming the step.
fn cuda_storage(t: &Tensor) -> Result<&CudaStorage> {
    match t.storage() {
        Storage::Cuda(s) => Ok(s),
        Storage::Cpu(_) => Err(Error::Invalid(
            "step graph: an input or output is not on the GPU".into(),
        )),
    }
}

/// A copy of `t` in a new buffer, made on the device.
fn duplicate(t: &Tensor) -> Result<Tensor> {
    let s = cuda_storage(t)?;
    let b = s.buffer();
    let copy = Buffer::alloc(b.gpu(), b.len())?;
    b.gpu().copy_on_device(copy.ptr(), b.ptr(), 4 * b.len())?;
    Tensor::from_storage(Storage::Cuda(s.wrap(copy)), t.shape())
}

impl StepGraph {
    /// A step graph on CUDA device `ordinal` (nothing captured yet).
    pub fn new(ordinal: usize) -> Result<StepGraph> {
        Ok(StepGraph {
            gpu: cuda::device(ordinal)?,
            runs: 0,
            captured: None,
        })
    }

    /// Runs `step` on `inputs` and returns its outputs (new tensors): eagerly on the first run,
    /// while launches are timed (per-kernel times need eager launches), and when the inputs'
    /// shapes differ from the captured ones; otherwise by replaying the graph captured on the
    /// second run.
    pub fn run(
        &mut self,
        inputs: &[&Tensor],
        step: &dyn Fn(&[Tensor]) -> Result<Vec<Tensor>>,
    ) -> Result<Vec<Tensor>> {
        self.runs += 1;
        let same_shapes = |c: &Captured| {
            c.inputs.len() == inputs.len()
                && c.inputs
                    .iter()
                    .zip(inputs)
                    .all(|(a, b)| a.shape() == b.shape())
        };
        if self.captured.as_ref().is_some_and(|c| !same_shapes(c)) {
            self.release()?;
            self.runs = 1;
        }
        if self.runs == 1 || self.gpu.timing() {
            let owned: Vec<Tensor> = inputs.iter().map(|t| (*t).clone()).collect();
            return step(&owned);
        }
        if self.captured.is_none() {
            self.captured = Some(self.capture(inputs, step)?);
        }
        let c = self.captured.as_ref().expect("captured above");
        for (fixed, new) in c.inputs.iter().zip(inputs) {
            let (dst, src) = (cuda_storage(fixed)?.buffer(), cuda_storage(new)?.buffer());
            self.gpu
                .copy_on_device(dst.ptr(), src.ptr(), 4 * dst.len())?;
            dst.touch();
        }
        self.gpu.replay(c.graph)?;
        c.outputs.iter().map(duplicate).collect()
    }

    /// Captures `step` on copies of `inputs` (buffers the graph keeps reading).
    fn capture(
        &self,
        inputs: &[&Tensor],
        step: &dyn Fn(&[Tensor]) -> Result<Vec<Tensor>>,
    ) -> Result<Captured> {
        let fixed = inputs
            .iter()
            .map(|t| duplicate(t))
            .collect::<Result<Vec<_>>>()?;
        self.gpu.begin_capture()?;
        let outputs = step(&fixed);
        let graph = self.gpu.end_capture();
        match (outputs, graph) {
            (Ok(outputs), Ok(graph)) => {
                for t in &outputs {
                    cuda_storage(t)?;
                }
                Ok(Captured {
                    graph,
                    inputs: fixed,
                    outputs,
                })
            }
            (Err(e), Ok(graph)) => {
                self.gpu.drop_graph(graph)?;
                Err(e)
            }
            (Err(e), Err(_)) | (Ok(_), Err(e)) => Err(e),
        }
    }

    /// Drops the captured graph (its buffers return to the cache).
    fn release(&mut self) -> Result<()> {
        match self.captured.take() {
            Some(c) => self.gpu.drop_graph(c.graph),
            None => Ok(()),
        }
    }
}

impl Drop for StepGraph {
    fn drop(&mut self) {
        // A failure here (a lost context) leaves nothing the caller could do.
        let _ = self.release();
    }
}
