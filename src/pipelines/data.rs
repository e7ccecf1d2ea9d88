//! `dydiff data navier-stokes`: turbulent 2-D flows as `(N, L, 2, R, R)` float32 velocity sequences
//! (channels `u`, `v`; rows `y`, columns `x`; docs/data.md, “Generated turbulence”). The solver is
//! [`crate::data::navier_stokes`]; samples run in parallel, each from its own seeded initial field,
//! so the file does not depend on the thread count.
//!
//! `dydiff data spring-mesh`: a damped 10 × 10 mass–spring mesh as `(N, L, 4, 10, 10)` float32
//! sequences (channels `p_x, p_y, q_x, q_y`; docs/data.md, “Generated spring mesh”), from
//! [`crate::data::spring_mesh`], likewise one seeded sample per task.

use super::train::clock_time;
use crate::data::channels;
use crate::data::navier_stokes::{initial_vorticity, Flow, FlowSettings};
use crate::data::spring_mesh::{Mesh, SIDE, SNAPSHOT_LEN};
use crate::error::{Error, Result};
use crate::io::npy;
use crate::io::outputs::Outputs;
use crate::memory;
use rayon::prelude::*;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Refuses any of the `(flag, value)` counts that is 0, naming the flag.
fn at_least_one(flags: &[(&str, usize)]) -> Result<()> {
    match flags.iter().find(|(_, v)| *v == 0) {
        Some((flag, _)) => Err(Error::Invalid(format!(
            "{flag}: expected at least 1, found 0"
        ))),
        None => Ok(()),
    }
}

/// Options of `dydiff data navier-stokes`: its flags, declared here once (the doc comments are
/// the `--help`).
#[derive(Clone, Debug, clap::Args)]
pub struct NavierStokesOptions {
    /// Output .npy in an existing directory, written atomically.
    #[arg(long)]
    pub out: PathBuf,
    /// Sequences N, 1 to 4294967296 (the file must fit in memory).
    #[arg(long)]
    pub samples: usize,
    /// Frames L per sequence, at least 1.
    #[arg(long)]
    pub frames: usize,
    /// Grid points R per side of the written frames, even and ≥ 8.
    #[arg(long, default_value_t = 64)]
    pub resolution: usize,
    /// Seed of the initial fields; sample n's field depends only on (seed, n).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Kinematic viscosity ν, ≥ 0.
    #[arg(long, default_value_t = 1e-3)]
    pub viscosity: f64,
    /// Linear drag μ, ≥ 0.
    #[arg(long, default_value_t = 0.1)]
    pub drag: f64,
    /// Forcing amplitude A, finite.
    #[arg(long, default_value_t = 1.0)]
    pub forcing: f64,
    /// Forcing wavenumber k_f, 1 to a third of the solver grid (oversample × R / 3).
    #[arg(long, default_value_t = 4)]
    pub forcing_wavenumber: usize,
    /// Solver time step, positive.
    #[arg(long, default_value_t = 0.01)]
    pub dt: f64,
    /// Solver steps between frames, at least 1.
    #[arg(long, default_value_t = 20)]
    pub frame_stride: usize,
    /// Solver steps discarded before the first frame.
    #[arg(long, default_value_t = 4000)]
    pub warmup: usize,
    /// The solver runs on oversample × R points per side (oversample ≥ 1); frames keep the
    /// Fourier modes an R-point grid holds.
    #[arg(long, default_value_t = 2)]
    pub oversample: usize,
    /// Draw a progress bar on stderr (when it is a terminal; the command line always asks).
    #[arg(skip = true)]
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
        at_least_one(&positive)?;
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

/// Runs `dydiff data navier-stokes`: checks `--out` before simulating, then writes the file and
/// its channel record (`OUT.channels.json`) atomically.
pub fn navier_stokes(o: &NavierStokesOptions) -> Result<()> {
    let mut outputs = Outputs::new();
    let out = outputs.npy_file("--out", &o.out)?;
    let record = outputs.file("--out", &channels::record_path(&o.out))?;
    o.validate()?;
    let progress = Progress::new(o.progress, (o.samples * o.frames) as u64, "frames");
    let tick = || progress.tick();
    let samples: Vec<Vec<f32>> = (0..o.samples)
        .into_par_iter()
        .map(|s| simulate(o, s, &tick))
        .collect::<Result<_>>()?;
    progress.finish();
    let r = o.resolution;
    outputs.write(
        out,
        &npy::encode(&[o.samples, o.frames, 2, r, r], &samples.concat()),
    )?;
    outputs.write(
        record,
        &channels::encode("navier-stokes", &channels::navier_stokes()),
    )?;
    outputs.commit()?;
    progress.closing_line(&o.out, &[o.samples, o.frames, 2, r, r]);
    Ok(())
}

/// Options of `dydiff data spring-mesh` (docs/cli.md, “data spring-mesh”): its flags, declared
/// here once (the doc comments are the `--help`). The output is `(samples, frames, 4, 10, 10)`
/// float32; the integrator's step is `dt / substeps`.
#[derive(Clone, Debug, clap::Args)]
pub struct SpringMeshOptions {
    /// Output .npy in an existing directory, written atomically.
    #[arg(long)]
    pub out: PathBuf,
    /// Sequences N, 1 to 4294967296 (the file must fit in memory). The default, 16, is a
    /// 21 MB file of 805 snapshots each, generated in seconds.
    #[arg(long, default_value_t = 16)]
    pub samples: usize,
    /// Snapshots L per sequence, at least 1; the first is the initial state.
    #[arg(long, default_value_t = 805)]
    pub frames: usize,
    /// Seed of the initial displacements; sample n's depend only on (seed, n).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Damping coefficient γ (force −γ·velocity), ≥ 0; 0 conserves the energy.
    #[arg(long, default_value_t = 0.1)]
    pub damping: f64,
    /// Integrator steps per snapshot interval, at least 1 (step dt / substeps).
    #[arg(long, default_value_t = 128)]
    pub substeps: usize,
    /// Time between snapshots, positive; the default is 2π/804, so 805 snapshots span 2π.
    #[arg(long, default_value_t = std::f64::consts::TAU / 804.0)]
    pub dt: f64,
    /// Draw a progress bar on stderr (when it is a terminal; the command line always asks).
    #[arg(skip = true)]
    pub progress: bool,
}

impl SpringMeshOptions {
    fn validate(&self) -> Result<()> {
        let positive = [
            ("--samples", self.samples),
            ("--frames", self.frames),
            ("--substeps", self.substeps),
        ];
        at_least_one(&positive)?;
        if self.samples as u64 > 1 << 32 {
            return Err(Error::Invalid(format!(
                "--samples: expected 1 to 4294967296 (each sample's initial state is keyed by a 32-bit index), found {}",
                self.samples
            )));
        }
        if !(self.dt.is_finite() && self.dt > 0.0) {
            return Err(Error::Invalid(format!(
                "--dt: expected a positive number, found {}",
                self.dt
            )));
        }
        if !(self.damping.is_finite() && self.damping >= 0.0) {
            return Err(Error::Invalid(format!(
                "--damping: expected a number ≥ 0, found {}",
                self.damping
            )));
        }
        let omega = Mesh::highest_frequency();
        let dtau = self.dt / self.substeps as f64;
        if dtau * omega > MAX_STEP_TIMES_FREQUENCY {
            return Err(Error::Invalid(format!(
                "--dt {} / --substeps {}: an integrator step of {dtau:.4} against the mesh's highest frequency ω = {omega:.3} (Δτ·ω = {:.2}) is beyond the integrator's stability (Δτ·ω ≤ {MAX_STEP_TIMES_FREQUENCY} keeps its energy error bounded); use --substeps {} or more, or a smaller --dt",
                self.dt,
                self.substeps,
                dtau * omega,
                (self.dt * omega / MAX_STEP_TIMES_FREQUENCY).ceil()
            )));
        }
        // The snapshots of every sample, their concatenation and the file's bytes (the mesh
        // being simulated is a few kilobytes per thread).
        let frames = memory::array(&[self.samples, self.frames, SNAPSHOT_LEN], 4);
        memory::ensure(
            &format!(
                "--samples {} × --frames {} × 4 × {SIDE} × {SIDE} (float32)",
                self.samples, self.frames
            ),
            memory::sum(&[frames, frames, frames]),
        )
    }
}

/// The largest integrator step `Δτ` times the mesh's highest frequency that `data spring-mesh`
/// accepts: semi-implicit Euler is stable below 2, but its energy error, of order `Δτ·ω`, is then
/// no longer small (at 1 about half the energy, at the default settings 4e-4).
pub const MAX_STEP_TIMES_FREQUENCY: f64 = 1.0;

/// How far a snapshot's energy may rise above the initial energy before the run stops: the
/// damped dynamics only lose energy, and the integrator's error at `Δτ·ω ≤ 1` stays below it.
pub const MAX_ENERGY_GROWTH: f64 = 2.0;

/// Simulates one sample and returns its snapshots `(L, 4, 10, 10)`; a snapshot whose energy
/// exceeds [`MAX_ENERGY_GROWTH`] times the initial energy stops it (an exploding mesh is never
/// written).
fn simulate_mesh(
    o: &SpringMeshOptions,
    sample: usize,
    tick: &(dyn Fn() + Sync),
) -> Result<Vec<f32>> {
    let dtau = o.dt / o.substeps as f64;
    let mut mesh = Mesh::initial(o.seed, sample as u32);
    let e0 = mesh.energy();
    let mut out = Vec::with_capacity(o.frames * SNAPSHOT_LEN);
    for f in 0..o.frames {
        if f > 0 {
            for _ in 0..o.substeps {
                mesh.step(dtau, o.damping);
            }
        }
        let e = mesh.energy();
        if e > MAX_ENERGY_GROWTH * e0 && e.is_finite() {
            return Err(Error::Invalid(format!(
                "sample {sample}: the mesh's energy grew from {e0:.4} to {e:.4e} by snapshot {f} (the damped mesh only loses energy: the integration is unstable); use a smaller --dt than {} or more --substeps than {}",
                o.dt, o.substeps
            )));
        }
        let start = out.len();
        mesh.write_snapshot(&mut out);
        if !out[start..].iter().all(|v| v.is_finite()) {
            return Err(Error::Invalid(format!(
                "sample {sample}: the mesh blew up by snapshot {f} (a non-finite or float32-overflowing state); use a smaller --dt than {} or more --substeps than {}",
                o.dt, o.substeps
            )));
        }
        tick();
    }
    Ok(out)
}

/// Runs `dydiff data spring-mesh`: checks `--out` before simulating, then writes the file and
/// its channel record (`OUT.channels.json`) atomically.
pub fn spring_mesh(o: &SpringMeshOptions) -> Result<()> {
    let mut outputs = Outputs::new();
    let out = outputs.npy_file("--out", &o.out)?;
    let record = outputs.file("--out", &channels::record_path(&o.out))?;
    o.validate()?;
    let progress = Progress::new(
        o.progress,
        (o.samples as u64).saturating_mul(o.frames as u64),
        "snapshots",
    );
    let tick = || progress.tick();
    let samples: Vec<Vec<f32>> = (0..o.samples)
        .into_par_iter()
        .map(|s| simulate_mesh(o, s, &tick))
        .collect::<Result<_>>()?;
    progress.finish();
    outputs.write(
        out,
        &npy::encode(&[o.samples, o.frames, 4, SIDE, SIDE], &samples.concat()),
    )?;
    outputs.write(
        record,
        &channels::encode("spring-mesh", &channels::spring_mesh()),
    )?;
    outputs.commit()?;
    progress.closing_line(&o.out, &[o.samples, o.frames, 4, SIDE, SIDE]);
    Ok(())
}

/// A generator's progress: a bar on a terminal; without one (a batch job, `nohup`) a plain line
/// at every tenth of the work; and a closing line naming the file once it is written.
struct Progress {
    bar: indicatif::ProgressBar,
    plain: bool,
    done: AtomicU64,
    total: u64,
    unit: &'static str,
    start: Instant,
}

impl Progress {
    fn new(show: bool, total: u64, unit: &'static str) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let bar = if show && terminal {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(&format!(
                    "simulating {{bar:30}} {{pos}}/{{len}} {unit}  elapsed {{elapsed_precise}}, ETA {{eta_precise}}"
                ))
                .expect("valid template"),
            );
            b
        } else {
            indicatif::ProgressBar::hidden()
        };
        Progress {
            bar,
            plain: show && !terminal,
            done: AtomicU64::new(0),
            total: total.max(1),
            unit,
            start: Instant::now(),
        }
    }

    fn tick(&self) {
        self.bar.inc(1);
        if self.plain {
            let d = self.done.fetch_add(1, Ordering::Relaxed) + 1;
            if d * 10 / self.total > (d - 1) * 10 / self.total {
                let secs = self.start.elapsed().as_secs_f64();
                eprintln!(
                    "dydiff: simulated {d}/{} {} ({:.0}%), elapsed {}, ETA {}",
                    self.total,
                    self.unit,
                    100.0 * d as f64 / self.total as f64,
                    clock_time(secs),
                    clock_time(secs / d as f64 * (self.total - d) as f64)
                );
            }
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }

    fn closing_line(&self, out: &Path, shape: &[usize]) {
        if self.plain || !self.bar.is_hidden() {
            eprintln!(
                "dydiff: wrote {} {shape:?} float32 in {:.1} s",
                out.display(),
                self.start.elapsed().as_secs_f64()
            );
        }
    }
}
