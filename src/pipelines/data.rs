//! `dydiff data navier-stokes`: turbulent 2-D flows as `(N, L, 2, R, R)` float32 velocity sequences
//! (channels `u`, `v`; rows `y`, columns `x`; docs/data.md, “Generated turbulence”). The solver is
//! [`crate::data::navier_stokes`]; samples run in parallel, each from its own seeded initial field,
//! so the file does not depend on the thread count.

use crate::data::navier_stokes::{initial_vorticity, Flow, FlowSettings};
use crate::error::{Error, Result};
use crate::io::npy;
use crate::io::outputs::Outputs;
use crate::memory;
use rayon::prelude::*;
use std::path::PathBuf;

/// Options of `dydiff data navier-stokes`.
#[derive(Clone, Debug)]
pub struct NavierStokesOptions {
    pub out: PathBuf,
    pub samples: usize,
    pub frames: usize,
    /// Output grid points per side.
    pub resolution: usize,
    /// The solver runs on `oversample · resolution` points per side; frames keep the modes the
    /// output grid holds.
    pub oversample: usize,
    pub seed: u64,
    pub viscosity: f64,
    pub drag: f64,
    pub forcing: f64,
    pub forcing_wavenumber: usize,
    pub dt: f64,
    /// Solver steps between written frames.
    pub frame_stride: usize,
    /// Solver steps run and discarded before the first frame.
    pub warmup: usize,
    pub progress: bool,
}

impl NavierStokesOptions {
    fn validate(&self) -> Result<()> {
        let positive = [
            ("--samples", self.samples),
            ("--frames", self.frames),
            ("--oversample", self.oversample),
            ("--frame-stride", self.frame_stride),
        ];
        for (flag, v) in positive {
            if v == 0 {
                return Err(Error::Invalid(format!(
                    "{flag}: expected at least 1, found 0"
                )));
            }
        }
        if self.resolution < 8 || !self.resolution.is_multiple_of(2) {
            return Err(Error::Invalid(format!(
                "--resolution: expected an even number ≥ 8, found {}",
                self.resolution
            )));
        }
        if !(self.dt.is_finite() && self.dt > 0.0) {
            return Err(Error::Invalid(format!(
                "--dt: expected a positive number, found {}",
                self.dt
            )));
        }
        if !(self.viscosity.is_finite() && self.viscosity >= 0.0) {
            return Err(Error::Invalid(format!(
                "--viscosity: expected a number ≥ 0, found {}",
                self.viscosity
            )));
        }
        if !(self.drag.is_finite() && self.drag >= 0.0) {
            return Err(Error::Invalid(format!(
                "--drag: expected a number ≥ 0, found {}",
                self.drag
            )));
        }
        let grid = self.resolution.checked_mul(self.oversample).ok_or_else(|| {
            Error::Invalid(format!(
                "--resolution {} × --oversample {}: the solver grid is too large (the product overflows)",
                self.resolution, self.oversample
            ))
        })?;
        if self.forcing_wavenumber == 0 || self.forcing_wavenumber > grid / 3 {
            return Err(Error::Invalid(format!(
                "--forcing-wavenumber: expected 1 to {} (a third of the solver grid), found {}",
                grid / 3,
                self.forcing_wavenumber
            )));
        }
        if !self.forcing.is_finite() {
            return Err(Error::Invalid(format!(
                "--forcing: expected a finite number, found {}",
                self.forcing
            )));
        }
        if self.samples as u64 > 1 << 32 {
            return Err(Error::Invalid(format!(
                "--samples: expected 1 to 4294967296 (each sample's initial field is keyed by a 32-bit index), found {}",
                self.samples
            )));
        }
        let last_frame = (self.frames - 1)
            .checked_mul(self.frame_stride)
            .and_then(|s| s.checked_add(self.warmup));
        if last_frame.is_none() {
            return Err(Error::Invalid(format!(
                "--warmup {} + (--frames {} − 1) × --frame-stride {}: too many solver steps (the count overflows)",
                self.warmup, self.frames, self.frame_stride
            )));
        }
        // The frames of every sample, their concatenation and the file's bytes; and per sample
        // being solved, the solver's 5 real and 10 complex arrays on the grid.
        let r = self.resolution;
        let frames = memory::array(&[self.samples, self.frames, 2, r, r], 4);
        let running = self.samples.min(rayon::current_num_threads());
        let need = memory::sum(&[
            frames,
            frames,
            frames,
            memory::array(&[running, grid, grid], 5 * 8 + 10 * 16),
        ]);
        memory::ensure(
            &format!(
                "--samples {} × --frames {} × 2 × --resolution {r}² (float32) and the solver's grids of {grid}²",
                self.samples, self.frames
            ),
            need,
        )
    }
}

/// Simulates one sample and returns its frames `(L, 2, R, R)`.
fn simulate(o: &NavierStokesOptions, sample: usize, tick: &(dyn Fn() + Sync)) -> Result<Vec<f32>> {
    let (r, k) = (o.resolution, o.oversample);
    let rs = r * k;
    let settings = FlowSettings {
        resolution: rs,
        viscosity: o.viscosity,
        drag: o.drag,
        forcing: o.forcing,
        forcing_wavenumber: o.forcing_wavenumber as f64,
        dt: o.dt,
    };
    let mut flow = Flow::new(settings, &initial_vorticity(rs, o.seed, sample as u32));
    let blown_up = |flow: &Flow, t: usize| -> Result<()> {
        if flow
            .omega
            .iter()
            .all(|w| w.re.is_finite() && w.im.is_finite())
        {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "sample {sample}: the flow blew up after {t} steps (non-finite vorticity); use a smaller --dt than {}",
                o.dt
            )))
        }
    };
    for _ in 0..o.warmup {
        flow.step();
    }
    blown_up(&flow, o.warmup)?;
    let mut out = Vec::with_capacity(o.frames * 2 * r * r);
    for f in 0..o.frames {
        if f > 0 {
            for _ in 0..o.frame_stride {
                flow.step();
            }
            blown_up(&flow, o.warmup + f * o.frame_stride)?;
        }
        let (u, v) = flow.velocity(r);
        out.extend(u.iter().chain(&v).map(|&x| x as f32));
        tick();
    }
    Ok(out)
}

/// Runs `dydiff data navier-stokes`: checks `--out` before simulating, then writes the file
/// atomically.
pub fn navier_stokes(o: &NavierStokesOptions) -> Result<()> {
    let mut outputs = Outputs::new();
    let out = outputs.file("--out", &o.out)?;
    o.validate()?;
    let bar = if o.progress {
        let b = indicatif::ProgressBar::new((o.samples * o.frames) as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "simulating {bar:30} {pos}/{len} frames  elapsed {elapsed_precise}, ETA {eta_precise}",
            )
            .expect("valid template"),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let tick = || bar.inc(1);
    let samples: Vec<Vec<f32>> = (0..o.samples)
        .into_par_iter()
        .map(|s| simulate(o, s, &tick))
        .collect::<Result<_>>()?;
    bar.finish_and_clear();
    let r = o.resolution;
    outputs.write(
        out,
        &npy::encode(&[o.samples, o.frames, 2, r, r], &samples.concat()),
    )?;
    outputs.commit()
}
