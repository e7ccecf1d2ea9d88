//! The training state (weights, Adam moments, EMA, step) and its checkpoint files: written
//! together with the model folder, read back exactly on `--resume`.

use crate::backend::{AdamStep, Device, Storage};
use crate::distributed::world;
use crate::error::{Error, Result};
use crate::io::outputs::DirOutput;
use crate::io::safetensors;
use crate::nn::{ParamBuilder, UNet2D, UNet2DConfig};
use crate::tensor::autograd::{backward, Tape};
use crate::tensor::Tensor;
use std::collections::HashMap;
use std::path::Path;

pub const STATE_FILE: &str = "train_state.safetensors";

pub const LOG_FILE: &str = "train_log.jsonl";

pub use crate::model::STEP_KEY;

/// Everything the optimizer carries between steps: the weights, Adam's moments and the weight
/// EMA, each one contiguous array holding the parameters in order (on the GPU the network's
/// weights are views of it, and one fused kernel updates all four).
pub struct State {
    pub step: usize,
    names: Vec<String>,
    shapes: Vec<Vec<usize>>,
    params: Storage,
    m: Storage,
    v: Storage,
    ema: Storage,
}

/// Which weights of a [`State`] a network is built on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weights {
    /// The optimizer's current weights (what the next step trains).
    Current,
    /// Their exponential moving average (what the model folder receives).
    Ema,
}

/// What one training step leaves on the device: its loss and the global gradient norm before
/// clipping, one value each, read when the host needs them (at log lines and checkpoints).
pub struct StepResult {
    pub step: usize,
    pub loss: Storage,
    pub norm: Storage,
}

/// The optimizer settings of a run.
#[derive(Clone, Copy, Debug)]
pub struct OptimizerSettings {
    pub weight_decay: f64,
    /// Maximum global gradient norm.
    pub clip: f64,
    pub ema_decay: f64,
}

impl State {
    /// The state of a fresh run on `unet`'s weights.
    pub fn fresh(unet: &UNet2D, device: Device) -> Result<State> {
        let mut names = vec![];
        let mut shapes = vec![];
        // sized once: grown by doubling, the vector (kept as the EMA's storage) would hold up to
        // half as much again as the weights
        let mut flat = Vec::with_capacity(unet.params().iter().map(|(_, t)| t.elem_count()).sum());
        for (name, t) in unet.params() {
            names.push(name.clone());
            shapes.push(t.shape().to_vec());
            flat.extend(t.to_vec()?);
        }
        let zeros = vec![0.0; flat.len()];
        Ok(State {
            step: 0,
            names,
            shapes,
            params: device.storage_from_vec(flat.clone())?,
            ema: device.storage_from_vec(flat)?,
            m: device.storage_from_vec(zeros.clone())?,
            v: device.storage_from_vec(zeros)?,
        })
    }

    /// The parameters' lengths, in order.
    fn lens(&self) -> Vec<usize> {
        self.shapes.iter().map(|s| s.iter().product()).collect()
    }

    /// One training step of `unet` (built by [`State::network`] on the current weights): the
    /// loss `loss(unet)` (a scalar), its gradients, and the fused update — clipping to the global
    /// norm, AdamW at learning rate `lr`, the EMA — all enqueued on the device without waiting
    /// for it. A non-finite loss or norm leaves the weights as they were; the caller finds it
    /// when it reads the step's loss.
    pub fn train_step(
        &mut self,
        unet: &UNet2D,
        loss: impl FnOnce(&UNet2D) -> Result<Tensor>,
        lr: f64,
        o: &OptimizerSettings,
        device: Device,
    ) -> Result<StepResult> {
        let loss = {
            let _tape = Tape::start();
            let loss = loss(unet)?;
            backward(&loss)?;
            loss
        };
        let grads: Vec<Storage> = unet
            .params()
            .iter()
            .map(|(_, t)| match t.grad() {
                Some(g) => Ok(g.storage().clone()),
                None => device.storage_from_vec(vec![0.0; t.elem_count()]),
            })
            .collect::<Result<_>>()?;
        let (grads, loss) = sum_over_ranks(grads, loss.storage().clone())?;
        let grads: Vec<&Storage> = grads.iter().collect();
        let step = self.step + 1;
        let h = AdamStep {
            lr: lr as f32,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: o.weight_decay as f32,
            bc1: (1.0 - 0.9f64.powi(step as i32)) as f32,
            bc2: (1.0 - 0.999f64.powi(step as i32)) as f32,
            max_norm: o.clip as f32,
            ema_decay: o.ema_decay.min((1.0 + step as f64) / (10.0 + step as f64)) as f32,
        };
        let norm = self
            .params
            .adamw(&grads, &mut self.m, &mut self.v, &mut self.ema, &loss, &h)?;
        self.step = step;
        Ok(StepResult { step, loss, norm })
    }

    /// The network on the current weights or their EMA.
    pub fn network(&self, config: &UNet2DConfig, device: Device, which: Weights) -> Result<UNet2D> {
        let flat = match which {
            Weights::Current => &self.params,
            Weights::Ema => &self.ema,
        };
        let map: HashMap<String, Storage> = self
            .names
            .iter()
            .cloned()
            .zip(flat.split(&self.lens())?)
            .collect();
        UNet2D::new(config.clone(), ParamBuilder::from_storages(map, device))
    }

    /// The bytes of `train_state.safetensors`; `path`, the file they are meant for, names it in
    /// errors.
    pub(super) fn encode(&self, path: &Path) -> Result<Vec<u8>> {
        let mut tensors = Vec::with_capacity(4 * self.names.len());
        for (kind, flat) in [
            ("param", &self.params),
            ("m", &self.m),
            ("v", &self.v),
            ("ema", &self.ema),
        ] {
            let values = flat.to_vec()?;
            let mut at = 0;
            for (name, shape) in self.names.iter().zip(&self.shapes) {
                let n: usize = shape.iter().product();
                tensors.push((
                    format!("{kind}/{name}"),
                    shape.clone(),
                    values[at..at + n].to_vec(),
                ));
                at += n;
            }
        }
        let step = self.step.to_string();
        // One metadata key: the header is then the same bytes in every process (a map's order
        // is not).
        safetensors::encode(path, &tensors, &[(STEP_KEY, &step)])
    }

    pub(crate) fn load(path: &Path, unet: &UNet2D, device: Device) -> Result<State> {
        let step = crate::model::checkpoint_step(path)?;
        let mut arrays = safetensors::read(path)?;
        let (names, shapes): (Vec<String>, Vec<Vec<usize>>) = unet
            .params()
            .iter()
            .map(|(n, t)| (n.clone(), t.shape().to_vec()))
            .unzip();
        let mut flat = Vec::with_capacity(4);
        for kind in ["param", "m", "v", "ema"] {
            let mut values = Vec::new();
            for (name, shape) in names.iter().zip(&shapes) {
                let key = format!("{kind}/{name}");
                let (found, data) = arrays
                    .remove(&key)
                    .ok_or_else(|| Error::bad_file(path, format!("tensor {key} is missing")))?;
                if &found != shape {
                    return Err(Error::bad_file(
                        path,
                        format!("tensor {key}: expected shape {shape:?}, found {found:?}"),
                    ));
                }
                values.extend(data);
            }
            flat.push(device.storage_from_vec(values)?);
        }
        let [params, m, v, ema]: [Storage; 4] = flat
            .try_into()
            .map_err(|_| Error::bad_file(path, "four kinds of arrays"))?;
        let s = State {
            step,
            names,
            shapes,
            params,
            m,
            v,
            ema,
        };
        Ok(s)
    }
}

/// The gradients and the loss of a training step summed over the ranks of the job
/// (docs/distributed.md, “Data-parallel training”): each rank's loss is its part of the mean
/// over the whole batch ([`rows_part`]), so the sums are the whole batch's gradients and loss.
/// One sum of one array per step — the gradients and the loss side by side — with NCCL on GPUs,
/// MPI on CPUs; in a process of its own, nothing is done.
fn sum_over_ranks(grads: Vec<Storage>, loss: Storage) -> Result<(Vec<Storage>, Storage)> {
    if world().size() == 1 {
        return Ok((grads, loss));
    }
    let mut lens: Vec<usize> = grads.iter().map(Storage::len).collect();
    lens.push(1);
    let mut parts: Vec<&Storage> = grads.iter().collect();
    parts.push(&loss);
    let sums = Storage::concat_channels(&parts, 1, &lens, 1)?.sum_over_ranks()?;
    let mut split = sums.split(&lens)?;
    let loss = split.pop().expect("the loss is the last part");
    Ok((split, loss))
}

/// The steps whose loss and gradient norm the host has not read yet: on the GPU they are read
/// only when a log line or a checkpoint needs them, so that the host never waits inside a step.
#[derive(Default)]
pub(crate) struct Pending(Vec<StepResult>);

impl Pending {
    pub fn push(&mut self, r: StepResult) {
        self.0.push(r);
    }
    /// Reads the pending steps: the sum and count of their losses and the last step's gradient
    /// norm; the first step with a non-finite loss is an error `bad(step, loss)`.
    pub fn read(&mut self, bad: impl Fn(usize, f32) -> Error) -> Result<(f64, usize, f64)> {
        let mut sum = 0.0;
        let n = self.0.len();
        for r in &self.0 {
            let loss = r.loss.to_vec()?[0];
            if !loss.is_finite() {
                return Err(bad(r.step, loss));
            }
            sum += f64::from(loss);
        }
        // only the last step's norm is logged: one read, not one per step
        let norm = match self.0.last() {
            Some(r) => f64::from(r.norm.to_vec()?[0]),
            None => f64::NAN,
        };
        self.0.clear();
        Ok((sum, n, norm))
    }
}

/// What a checkpoint adds to the state and the log: the validation loss (with `--val-data`) and
/// the model folder's files, by path inside it.
pub(crate) type Checkpoint = (Option<f64>, Vec<(String, Vec<u8>)>);

/// Where a training loop writes its checkpoints: the folder, the names of its state and log
/// files, and the verb of its closing line.
pub(crate) struct Files {
    pub folder: DirOutput,
    pub state: &'static str,
    pub log: &'static str,
    /// What the closing line says, e.g. `trained` or `trained the interpolator of`.
    pub done: &'static str,
    /// Where the weights went, for the closing line.
    pub weights: String,
}

/// The first of the weights and the EMA weights that holds NaN or infinite values, and how many.
pub(super) fn non_finite_state(state: &State) -> Result<Option<(&'static str, usize)>> {
    for (kind, flat) in [("weights", &state.params), ("EMA weights", &state.ema)] {
        let bad = flat.to_vec()?.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            return Ok(Some((kind, bad)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipelines::train::options::default_unet;

    #[test]
    fn non_finite_weights_are_found() {
        let c = UNet2DConfig::from_json(&default_unet(4, 2, (8, 8))).unwrap();
        let unet = UNet2D::init(c, 0, Device::Cpu).unwrap();
        let mut s = State::fresh(&unet, Device::Cpu).unwrap();
        assert_eq!(non_finite_state(&s).unwrap(), None);
        let mut bad = s.ema.to_vec().unwrap();
        let n = bad.len();
        bad[0] = f32::NAN;
        bad[n - 1] = f32::INFINITY;
        s.ema = Device::Cpu.storage_from_vec(bad).unwrap();
        assert_eq!(non_finite_state(&s).unwrap(), Some(("EMA weights", 2)));
        s.params = Device::Cpu.storage_from_vec(vec![f32::NAN; n]).unwrap();
        assert!(matches!(
            non_finite_state(&s).unwrap(),
            Some(("weights", _))
        ));
    }
}
