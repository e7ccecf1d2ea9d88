//! A step run many times with new input values and the same shapes — the sampler's network
//! evaluation and DDIM update: on the CPU simply run; on a CUDA device captured once as a CUDA
//! graph and replayed ([`graph`](super::graph), docs/devices.md, “CUDA graphs”).

use super::graph::StepGraph;
use crate::backend::Device;
use crate::error::Result;
use crate::tensor::Tensor;

/// Runs a repeated step on its device, see the module documentation.
pub enum StepRunner {
    Direct,
    Graph(StepGraph),
}

impl StepRunner {
    /// A runner for steps on `device`.
    pub fn new(device: Device) -> Result<StepRunner> {
        Ok(match device {
            Device::Cpu => StepRunner::Direct,
            Device::Cuda(n) => StepRunner::Graph(StepGraph::new(n)?),
        })
    }

    /// `step(inputs)`: its outputs are new tensors either way. The step must depend on nothing
    /// but its inputs' values and shapes (on a GPU, a replay repeats the captured launches).
    pub fn run(
        &mut self,
        inputs: &[&Tensor],
        step: &dyn Fn(&[Tensor]) -> Result<Vec<Tensor>>,
    ) -> Result<Vec<Tensor>> {
        match self {
            StepRunner::Direct => step(&inputs.iter().map(|t| (*t).clone()).collect::<Vec<_>>()),
            StepRunner::Graph(g) => g.run(inputs, step),
        }
    }
}
