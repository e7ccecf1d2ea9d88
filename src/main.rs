//! The `dydiff` command line (docs/cli.md). This file only parses flags into the options structs of
//! [`dydiff::pipelines`] and reports errors as one line on stderr with a non-zero exit.

use clap::{Args, Parser, Subcommand};
use dydiff::backend::PadMode;
use dydiff::diffusion::schedule::Prediction;
use dydiff::distributed::{self, world};
use dydiff::model::Method;
use dydiff::pipelines::train::dyffusion as train_dyffusion;
use dydiff::pipelines::{bench, data, denoise, eval, sample, train};
use dydiff::{Device, Error, Result};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "dydiff",
    version,
    about = "Fast probabilistic spatiotemporal forecasting with diffusion models"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Common {
    /// Worker threads, 1 to 1024 (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Compute device: cpu or cuda:N.
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
    /// How the GPU multiplies in the network: fp32, tf32 (tensor cores, operands rounded to 10
    /// mantissa bits) or bf16 (operands rounded to 7 mantissa bits), float32 accumulation.
    /// Storage is float32; the CPU always computes in float32.
    #[arg(long, global = true, default_value = "tf32")]
    precision: String,
}

#[derive(Subcommand)]
enum Command {
    /// Forecasts an ensemble for each observed sequence with a trained model (DDIM sampling of
    /// Dynamical Diffusion, or of the standard diffusion model when the model's dyn_eta is 0).
    ///
    /// Reads observations (N, L, C, H, W) float32 .npy in data space (the first P+1 frames are
    /// the history; if the file also holds the S future frames, pictures show them as the truth)
    /// and writes the forecast (N, M, S, C, H, W) float32 .npy. The output locations are checked
    /// before anything is read; the forecast and the pictures are written together at the end,
    /// or not at all. The same --seed gives the same forecast for any --batch, --threads and
    /// device.
    ///
    /// Built with the mpi feature and started by mpirun or srun, the ranks share the batches of
    /// pairs and rank 0 writes the same forecast file (docs/distributed.md).
    Sample {
        /// Model folder: dydiff.json, scheduler/scheduler_config.json, unet/ (diffusers).
        /// Default: the built-in demo model (trained on generated turbulence) and, without
        /// --input, its demo observations.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Observations, float32 .npy/.npz of shape (N, L, C, H, W) with L ≥ P+1.
        #[arg(long)]
        input: Option<PathBuf>,
        /// Forecast .npy to write, shape (N, M, S, C, H, W), in an existing directory.
        #[arg(long, default_value = "forecast.npy")]
        out: PathBuf,
        /// Ensemble members M per sample, 1 to 16777216 (the forecast must fit in memory).
        #[arg(long, default_value_t = 8)]
        members: usize,
        /// DDIM steps K (default 20, chosen with --ddim-eta 1 on validation data for the built-in
        /// model), from 1 to about the model's training timesteps T
        /// (timesteps (k−1)·⌊T/K⌋ + steps_offset, all below T). Not for a DYffusion model: its
        /// cold sampling makes N = horizon + additional_steps forecaster calls, 2N − 3
        /// interpolator calls and, with refinement, horizon − 1 more per window (the summary
        /// line states the count).
        #[arg(long)]
        steps: Option<usize>,
        /// Seed of the noise; each value depends only on (seed, sample, member, step, element).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// DDIM stochasticity in [0, 1] (default 1): 0 deterministic given the initial noise,
        /// 1 DDPM-like. Not for a DYffusion model, whose members differ by the interpolator's
        /// dropout masks (keyed by seed, sample, member, call and layer).
        #[arg(long)]
        ddim_eta: Option<f64>,
        /// Initial noise ε (N, M, S, C, H, W) in model space, instead of the seeded generator.
        #[arg(long)]
        init_noise: Option<PathBuf>,
        /// (sample, member) pairs per network call, at least 1; bounds memory, never changes the
        /// result.
        #[arg(long, default_value_t = sample::DEFAULT_BATCH)]
        batch: usize,
        /// Directory for one PNG per sample: history, truth, members, ensemble mean and spread
        /// (an existing directory keeps its other files; a new one needs an existing parent).
        #[arg(long)]
        png: Option<PathBuf>,
        /// Frames to forecast (default: the model's S). Beyond S the forecast rolls out in
        /// windows of S: each next window's history is the last P+1 frames of the member's own
        /// trajectory; the output is (N, M, LEAD, C, H, W), at most 256 windows. --init-noise
        /// gives the first window's noise; later windows draw theirs from the seed.
        #[arg(long)]
        lead: Option<usize>,
    },
    /// One evaluation of a diffusers UNet2DModel: reads an (N, in_channels, H, W) float32 .npy,
    /// writes the network output (N, out_channels, H, W).
    Denoise {
        /// Model folder with config.json and diffusion_pytorch_model.safetensors (as written by
        /// diffusers' save_pretrained).
        #[arg(long)]
        unet: PathBuf,
        /// Network input, float32 .npy of shape (N, in_channels, H, W).
        #[arg(long)]
        input: PathBuf,
        /// Diffusion timestep given to the network's timestep embedding (e.g. 0–999); any
        /// finite float32.
        #[arg(long)]
        timestep: f32,
        /// Output .npy in an existing directory, written atomically.
        #[arg(long)]
        out: PathBuf,
    },
    /// Trains a model on sequences (N, L, C, H, W): Dynamical Diffusion, the standard diffusion
    /// model with --dyn-eta 0, or DYffusion with --method dyffusion (interpolator, then
    /// forecaster). Writes the model folder (EMA weights), a resumable training state and the
    /// training log (per stage for DYffusion), all together at each checkpoint.
    ///
    /// Built with the mpi feature and started by mpirun or srun, training is data-parallel: the
    /// ranks share each --batch, sum their gradients (NCCL between GPUs), and rank 0 writes the
    /// checkpoints (docs/distributed.md).
    Train {
        /// Training sequences, float32 .npy (N, L, C, H, W), L ≥ history + future, finite and
        /// not constant.
        #[arg(long)]
        data: PathBuf,
        /// Model folder to write, in an existing directory; it always holds one whole
        /// checkpoint.
        #[arg(long)]
        out: PathBuf,
        /// History frames P+1 given to the network, at least 1.
        #[arg(long)]
        history: usize,
        /// Future frames S to forecast, at least 1.
        #[arg(long)]
        future: usize,
        /// The method: dydiff (Dynamical Diffusion; with --dyn-eta 0 the standard diffusion
        /// model) or dyffusion (DYffusion: an interpolator, then a forecaster; see --stage).
        #[arg(long, default_value = "dydiff", value_enum)]
        method: Method,
        /// η of the dynamics schedule, in [0, 1]; 0 trains the standard diffusion model
        /// (--method dydiff).
        #[arg(long, default_value_t = 0.5)]
        dyn_eta: f64,
        /// DYffusion: which stages to train — both (the interpolator for --interpolator-steps,
        /// then the forecaster for --steps), interpolator, or forecaster (on a folder whose
        /// interpolator is trained). --resume continues whichever is unfinished.
        #[arg(long, default_value = "both", value_parser = ["both", "interpolator", "forecaster"])]
        stage: String,
        /// DYffusion: the interpolator's optimizer steps (default: --steps).
        #[arg(long)]
        interpolator_steps: Option<usize>,
        /// DYffusion: k ≥ 0 interpolation steps before the first whole time step (the
        /// forecaster runs N = future + k steps).
        #[arg(long, default_value_t = 0)]
        additional_steps: usize,
        /// DYffusion: the forecaster's condition besides its input — data (the history), none,
        /// or data+noise (the history blended with fresh noise, more history as n grows).
        #[arg(long, default_value = "data", value_parser = ["data", "none", "data+noise"])]
        forecaster_condition: String,
        /// DYffusion: the interpolator's dropout, 0 ≤ p < 1; active in training and at
        /// inference, where it makes the ensemble's spread.
        #[arg(long, default_value_t = 0.15)]
        interpolator_dropout: f64,
        /// DYffusion: the weight λ₁ of the forecaster's loss on its first forecast.
        #[arg(long, default_value_t = 0.5)]
        lambda_1: f64,
        /// DYffusion: the weight λ₂ of the look-ahead loss (through the interpolator).
        #[arg(long, default_value_t = 0.5)]
        lambda_2: f64,
        /// Diffuse the history frames too, as the reference implementation does: the noise
        /// chain starts at the oldest frame, the network sees the clean history as a separate
        /// condition and predicts the noise of all P+1+S frames (in (P+1+L)·C channels, out
        /// L·C). Stored as "diffuse_history": true in dydiff.json; the sampler follows it.
        #[arg(long)]
        diffuse_history: bool,
        /// A diffusers UNet2DModel config.json (in/out channels filled in from the data, or
        /// checked). Default: a small 3-level network.
        #[arg(long)]
        unet_config: Option<PathBuf>,
        /// What the network's convolutions read outside the frame: zeros (diffusers' default)
        /// or circular (the frame wrapped around: the right choice for periodic fields such as
        /// `data navier-stokes`; zero padding there makes the border pixels diverge as DDIM
        /// takes more steps). Stored as "padding_mode" in dydiff.json; the sampler follows it.
        #[arg(long, default_value = "zeros", value_parser = ["zeros", "circular"])]
        padding_mode: String,
        /// What the network learns to predict: epsilon (the noise ε̃, the papers' choice) or
        /// v_prediction (the velocity v = √ᾱ·ε̃ − √(1−ᾱ)·D, whose error does not grow as 1/√ᾱ
        /// at the noisiest timesteps: sampling with many DDIM steps stays stable). Stored as
        /// diffusers' "prediction_type" in scheduler/scheduler_config.json; the sampler follows
        /// it.
        #[arg(long, default_value = "epsilon", value_parser = prediction_type)]
        prediction_type: Prediction,
        /// Total optimizer steps, 1 to 4294967295. The default, with the other defaults (batch
        /// 16, lr 1e-3, 100 warm-up steps, cosine decay), is the recipe of the built-in model:
        /// about 15 minutes on 2 CPU cores for its 32×32 turbulence; far fewer steps give a model
        /// that does not beat persistence (see --val-data).
        #[arg(long, default_value_t = train::DEFAULT_TRAIN_STEPS)]
        steps: usize,
        /// Windows per step, 1 to 4294967295 (the batch must fit in memory). Under mpirun or
        /// srun (mpi feature) the global batch: each rank takes its share, at least one row.
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Peak learning rate (AdamW), positive and within float32.
        #[arg(long, default_value_t = 1e-3)]
        lr: f64,
        /// Linear warm-up steps, at most --steps (default: 100, or --steps and
        /// --interpolator-steps when fewer; with --resume, the run's own).
        #[arg(long)]
        warmup_steps: Option<usize>,
        /// Cosine decay of the learning rate to 0 at --steps after the warm-up (the default;
        /// the flag is accepted for older scripts).
        #[arg(long, conflicts_with = "constant_lr")]
        cosine: bool,
        /// Keep the peak learning rate after the warm-up instead of the cosine decay.
        #[arg(long)]
        constant_lr: bool,
        /// AdamW weight decay, ≥ 0.
        #[arg(long, default_value_t = 0.0)]
        weight_decay: f64,
        /// Maximum global gradient norm, positive.
        #[arg(long, default_value_t = 1.0)]
        clip: f64,
        /// Decay of the weights' moving average (the saved weights), in [0, 1).
        #[arg(long, default_value_t = 0.999)]
        ema_decay: f64,
        /// Seed of the initial weights, the windows, timesteps and noise.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Validation sequences; their loss is logged at every checkpoint.
        #[arg(long)]
        val_data: Option<PathBuf>,
        /// Continue the run in --out from its last checkpoint (same flags).
        #[arg(long)]
        resume: bool,
        /// data_scale, x_model = (x_data − data_shift) / data_scale: positive and finite
        /// (default: the training data's standard deviation).
        #[arg(long)]
        data_scale: Option<f64>,
        /// data_shift, see --data-scale: finite (default: the training data's mean).
        #[arg(long, allow_hyphen_values = true)]
        data_shift: Option<f64>,
        /// Steps between log lines, at least 1.
        #[arg(long, default_value_t = 50)]
        log_every: usize,
        /// Steps between checkpoints, at least 1.
        #[arg(long, default_value_t = 1000)]
        checkpoint_every: usize,
    },
    /// Scores an ensemble forecast against the truth (defined in docs/metrics.md): fair and
    /// standard CRPS, pooled CRPS, CSI and FSS at thresholds and windows 1, 3, 5, RMSE and MAE of
    /// the ensemble mean, spread, spread-skill ratio, PSNR and SSIM; overall and per lead time.
    Eval(eval::EvalOptions),
    /// Data generators.
    #[command(subcommand)]
    Data(DataCommand),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Lists the compute devices: the CPU, the GPU architectures this binary's CUDA kernels were
    /// built for, and each GPU the CUDA driver sees (name, compute capability, memory, driver
    /// version) — or why there is none.
    Info,
}

#[derive(Subcommand)]
enum DataCommand {
    /// Turbulent 2-D incompressible flows: Navier–Stokes in vorticity form on the periodic
    /// square [0, 2π)² (pseudo-spectral, 2/3 dealiasing, integrating-factor RK4) with linear drag
    /// and Kolmogorov forcing (body force A·sin(k_f·y) along x), from random smooth initial
    /// vorticity. Writes the velocity (u, v) as (N, L, 2, R, R) float32 (rows y, columns x),
    /// reproducible by --seed.
    NavierStokes {
        /// Output .npy in an existing directory, written atomically.
        #[arg(long)]
        out: PathBuf,
        /// Sequences N, 1 to 4294967296 (the file must fit in memory).
        #[arg(long)]
        samples: usize,
        /// Frames L per sequence, at least 1.
        #[arg(long)]
        frames: usize,
        /// Grid points R per side of the written frames, even and ≥ 8.
        #[arg(long, default_value_t = 64)]
        resolution: usize,
        /// Seed of the initial fields; sample n's field depends only on (seed, n).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Kinematic viscosity ν, ≥ 0.
        #[arg(long, default_value_t = 1e-3)]
        viscosity: f64,
        /// Linear drag μ, ≥ 0.
        #[arg(long, default_value_t = 0.1)]
        drag: f64,
        /// Forcing amplitude A, finite.
        #[arg(long, default_value_t = 1.0)]
        forcing: f64,
        /// Forcing wavenumber k_f, 1 to a third of the solver grid (oversample × R / 3).
        #[arg(long, default_value_t = 4)]
        forcing_wavenumber: usize,
        /// Solver time step, positive.
        #[arg(long, default_value_t = 0.01)]
        dt: f64,
        /// Solver steps between frames, at least 1.
        #[arg(long, default_value_t = 20)]
        frame_stride: usize,
        /// Solver steps discarded before the first frame.
        #[arg(long, default_value_t = 4000)]
        warmup: usize,
        /// The solver runs on oversample × R points per side (oversample ≥ 1); frames keep the
        /// Fourier modes an R-point grid holds.
        #[arg(long, default_value_t = 2)]
        oversample: usize,
    },
    /// A damped mass–spring mesh, the spring-mesh forecasting benchmark: 10 × 10 unit masses on
    /// the integer grid, the top row fixed, a spring of constant 1 between every pair of
    /// horizontal, vertical and diagonal neighbours (342 springs, at rest at length 1 or √2),
    /// damping force −γ·velocity. Each free node starts displaced uniformly within a disc of
    /// radius 0.35, at rest; semi-implicit Euler with --substeps steps per snapshot. Writes
    /// (N, L, 4, 10, 10) float32: channels momentum p_x, p_y and position q_x, q_y (unit masses,
    /// so momentum = velocity), rows y from the fixed top row 0, columns x; snapshot 0 is the
    /// initial state. Reproducible by --seed.
    SpringMesh {
        /// Output .npy in an existing directory, written atomically.
        #[arg(long)]
        out: PathBuf,
        /// Sequences N, 1 to 4294967296 (the file must fit in memory). The default, 16, is a
        /// 21 MB file of 805 snapshots each, generated in seconds.
        #[arg(long, default_value_t = 16)]
        samples: usize,
        /// Snapshots L per sequence, at least 1; the first is the initial state.
        #[arg(long, default_value_t = 805)]
        frames: usize,
        /// Seed of the initial displacements; sample n's depend only on (seed, n).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Damping coefficient γ (force −γ·velocity), ≥ 0; 0 conserves the energy.
        #[arg(long, default_value_t = 0.1)]
        damping: f64,
        /// Integrator steps per snapshot interval, at least 1 (step dt / substeps).
        #[arg(long, default_value_t = 128)]
        substeps: usize,
        /// Time between snapshots, positive; the default is 2π/804, so 805 snapshots span 2π.
        #[arg(long, default_value_t = std::f64::consts::TAU / 804.0)]
        dt: f64,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Times the UNet forward pass on random input; prints a JSON report with GFLOP/s and a
    /// per-operation breakdown.
    Unet {
        /// Model folder (config.json + diffusion_pytorch_model.safetensors); a folder with only
        /// config.json is timed with seeded random weights (the time does not depend on them).
        #[arg(long)]
        unet: PathBuf,
        /// Batch size, at least 1.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Spatial size (square), a positive multiple of the network's downsampling factor.
        #[arg(long, default_value_t = 32)]
        size: usize,
        /// Timed repetitions (the median is reported), at least 1.
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Untimed repetitions first.
        #[arg(long, default_value_t = 1)]
        warmup: usize,
    },
    /// Times one training step (forward, MSE loss, backward, clipping, AdamW + EMA) on random
    /// data; prints a JSON report with GFLOP/s and a per-operation breakdown.
    Train {
        /// Model folder (config.json + diffusion_pytorch_model.safetensors); a folder with only
        /// config.json is timed with seeded random weights.
        #[arg(long)]
        unet: PathBuf,
        /// Batch size, at least 1.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Spatial size (square), a positive multiple of the network's downsampling factor.
        #[arg(long, default_value_t = 32)]
        size: usize,
        /// Timed repetitions (the median is reported), at least 1.
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Untimed repetitions first.
        #[arg(long, default_value_t = 1)]
        warmup: usize,
    },
    /// Measures the machine's fp32 fused multiply-add peak (GFLOP/s on one thread and on all).
    Peak,
    /// Measures a model's noise-prediction error on sequences at fixed timesteps: the mean
    /// squared error of ε̂ against ε̃ per diffused frame, and over the future frames (the ones
    /// every process forecasts), as a JSON report. A diagnostic of how well a network learned
    /// its process; windows and noise are drawn as for training's validation, from --seed.
    Noise {
        /// Model folder (dydiff.json, scheduler/, unet/).
        #[arg(long)]
        model: PathBuf,
        /// Sequences (N, L, C, H, W) in data space, L ≥ history + future, float32 .npy/.npz.
        #[arg(long)]
        data: PathBuf,
        /// Timesteps t, comma-separated, each below the schedule's length.
        #[arg(long, value_delimiter = ',', default_value = "50,250,500,750,950")]
        timesteps: Vec<usize>,
        /// Windows per batch, at least 1.
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Batches per timestep, 1 to 1000.
        #[arg(long, default_value_t = 4)]
        batches: u32,
        /// Seed of the windows and the noise.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

/// The most worker threads `--threads` starts.
const MAX_THREADS: usize = 1024;

/// What every command needs before it starts: the thread pool, the precision, and the device
/// (`info` reports on the devices, so it needs none to work). In a job of several ranks, only
/// `train` and `sample` run (docs/distributed.md).
fn setup(cli: &Cli) -> Result<Device> {
    if let Some(n) = cli.common.threads {
        if !(1..=MAX_THREADS).contains(&n) {
            return Err(Error::Invalid(format!(
                "--threads: expected 1 to {MAX_THREADS}, found {n}"
            )));
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| Error::Invalid(format!("--threads: {e}")))?;
    }
    dydiff::backend::cuda::set_precision(match cli.common.precision.as_str() {
        "fp32" => dydiff::backend::cuda::Precision::Fp32,
        "tf32" => dydiff::backend::cuda::Precision::Tf32,
        "bf16" => dydiff::backend::cuda::Precision::Bf16,
        other => {
            return Err(Error::Invalid(format!(
                "--precision: expected fp32, tf32 or bf16, found {other}"
            )))
        }
    });
    let size = world().size();
    if size > 1 && !matches!(cli.command, Command::Train { .. } | Command::Sample { .. }) {
        return Err(Error::Invalid(format!(
            "started as {size} ranks: only `dydiff train` and `dydiff sample` run on several ranks (docs/distributed.md); run this command as one process"
        )));
    }
    match cli.command {
        Command::Info => Ok(Device::Cpu),
        _ => Device::parse(&cli.common.device),
    }
}

fn run(cli: Cli) -> Result<()> {
    // ranks started with different arguments would wait for each other for ever
    let args: Vec<String> = std::env::args().skip(1).collect();
    world().check_same(
        "arguments",
        distributed::fingerprint(args.join("\0").as_bytes()),
    )?;
    let device = world().agree(setup(&cli))?;
    let cpu_only = match &cli.command {
        Command::Eval(_) => Some("eval"),
        Command::Data(_) => Some("data"),
        _ => None,
    };
    if let (Some(command), Device::Cuda(n), true) = (cpu_only, device, world().is_root()) {
        eprintln!(
            "dydiff: note: {command} computes on the CPU; --device cuda:{n} is not used by it"
        );
    }
    match cli.command {
        Command::Info => print_info(),
        Command::Denoise {
            unet,
            input,
            timestep,
            out,
        } => denoise::run(&denoise::DenoiseOptions {
            unet,
            input,
            timestep,
            out,
            device,
        }),
        Command::Sample {
            model,
            input,
            out,
            members,
            steps,
            seed,
            ddim_eta,
            init_noise,
            batch,
            png,
            lead,
        } => {
            let png = png.or_else(|| model.is_none().then(|| PathBuf::from("forecast_png")));
            sample::run(&sample::SampleOptions {
                model,
                input,
                out,
                members,
                steps,
                seed,
                ddim_eta,
                init_noise,
                batch,
                png,
                lead,
                device,
                progress: true,
            })
            .map(|report| {
                if world().is_root() {
                    eprintln!("dydiff: {report}")
                }
            })
        }
        Command::Train {
            data,
            out,
            history,
            future,
            method,
            dyn_eta,
            stage,
            interpolator_steps,
            additional_steps,
            forecaster_condition,
            interpolator_dropout,
            lambda_1,
            lambda_2,
            diffuse_history,
            unet_config,
            padding_mode,
            prediction_type,
            steps,
            batch,
            lr,
            warmup_steps,
            cosine: _,
            constant_lr,
            weight_decay,
            clip,
            ema_decay,
            seed,
            val_data,
            resume,
            data_scale,
            data_shift,
            log_every,
            checkpoint_every,
        } => {
            // (with --resume the run's own, added by with_recorded_flags)
            let warmup_steps = warmup_steps.unwrap_or_else(|| {
                train::default_warmup(steps.min(interpolator_steps.unwrap_or(steps)))
            });
            let options = train::TrainOptions {
                data,
                out,
                history,
                future,
                dyn_eta,
                diffuse_history,
                unet_config,
                padding_mode: PadMode::parse(&padding_mode).expect("clap checks the value"),
                prediction: prediction_type,
                steps,
                batch,
                lr,
                warmup_steps,
                cosine: !constant_lr,
                weight_decay,
                clip,
                ema_decay,
                seed,
                val_data,
                resume,
                data_scale,
                data_shift,
                log_every,
                checkpoint_every,
                device,
                progress: true,
            };
            if method == Method::Dyffusion {
                let stage = match stage.as_str() {
                    "interpolator" => train_dyffusion::Stage::Interpolator,
                    "forecaster" => train_dyffusion::Stage::Forecaster,
                    _ => train_dyffusion::Stage::Both,
                };
                let forecaster_condition = dydiff::model::dyffusion::Condition::parse(
                    &forecaster_condition,
                )
                .map_err(|m| dydiff::Error::Invalid(format!("--forecaster-condition: {m}")));
                forecaster_condition.and_then(|forecaster_condition| {
                    train_dyffusion::run(
                        &options,
                        &train_dyffusion::DyffusionOptions {
                            stage,
                            interpolator_steps,
                            additional_steps,
                            forecaster_condition,
                            interpolator_dropout,
                            lambda_1,
                            lambda_2,
                        },
                    )
                })
            } else {
                train::run(&options)
            }
        }
        Command::Eval(o) => eval::run(&o).map(|_| ()),
        Command::Data(DataCommand::NavierStokes {
            out,
            samples,
            frames,
            resolution,
            seed,
            viscosity,
            drag,
            forcing,
            forcing_wavenumber,
            dt,
            frame_stride,
            warmup,
            oversample,
        }) => data::navier_stokes(&data::NavierStokesOptions {
            out,
            samples,
            frames,
            resolution,
            oversample,
            seed,
            viscosity,
            drag,
            forcing,
            forcing_wavenumber,
            dt,
            frame_stride,
            warmup,
            progress: true,
        }),
        Command::Data(DataCommand::SpringMesh {
            out,
            samples,
            frames,
            seed,
            damping,
            substeps,
            dt,
        }) => data::spring_mesh(&data::SpringMeshOptions {
            out,
            samples,
            frames,
            seed,
            damping,
            substeps,
            dt,
            progress: true,
        }),
        Command::Bench(BenchCommand::Unet {
            unet,
            batch,
            size,
            reps,
            warmup,
        }) => {
            let report = bench::run(&bench::BenchOptions {
                unet,
                batch,
                height: size,
                width: size,
                reps,
                warmup,
                device,
            })?;
            dydiff::io::print_stdout(&format!("{report}\n"))
        }
        Command::Bench(BenchCommand::Train {
            unet,
            batch,
            size,
            reps,
            warmup,
        }) => {
            let report = bench::run_train(&bench::BenchOptions {
                unet,
                batch,
                height: size,
                width: size,
                reps,
                warmup,
                device,
            })?;
            dydiff::io::print_stdout(&format!("{report}\n"))
        }
        Command::Bench(BenchCommand::Peak) => {
            dydiff::io::print_stdout(&format!("{}\n", bench::peak()?))
        }
        Command::Bench(BenchCommand::Noise {
            model,
            data,
            timesteps,
            batch,
            batches,
            seed,
        }) => {
            let report = bench::noise_error(&bench::NoiseOptions {
                model,
                data,
                timesteps,
                batch,
                batches,
                seed,
                device,
            })?;
            dydiff::io::print_stdout(&format!("{report}\n"))
        }
    }
}

/// `dydiff info`: the CPU, then what the CUDA backend says (docs/devices.md).
fn print_info() -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut lines = vec![format!(
        "cpu: {cores} core{} ({})",
        if cores == 1 { "" } else { "s" },
        std::env::consts::ARCH
    )];
    lines.extend(dydiff::backend::cuda::info_lines());
    dydiff::io::print_stdout(&(lines.join("\n") + "\n"))
}

/// A command-line parsing error as one line: clap's message without its usage block.
fn one_line(e: &clap::Error) -> String {
    e.to_string()
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")
        })
        .collect::<Vec<_>>()
        .join(" ")
        .trim_start_matches("error: ")
        .to_string()
}

/// `train --resume` continues the run in `--out` with the flags it recorded: each recorded flag
/// that the command line does not give is added (docs/cli.md, “train”), so `--resume` alone
/// suffices; a flag given with another value is then refused by name.
fn with_recorded_flags(args: Vec<String>) -> Vec<String> {
    if args.get(1).map(String::as_str) != Some("train") || !args.iter().any(|a| a == "--resume") {
        return args;
    }
    let out = args.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix("--out=")
            .map(String::from)
            .or_else(|| (a == "--out").then(|| args.get(i + 1).cloned()).flatten())
    });
    let Some(out) = out else {
        return args;
    };
    let given = |flag: &str| {
        args.iter()
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
    };
    let constant = given("--cosine");
    let mut full = args.clone();
    for (flag, value) in train::recorded_flags(std::path::Path::new(&out)) {
        if given(flag) || (flag == "--constant-lr" && constant) {
            continue;
        }
        full.push(flag.to_string());
        full.extend(value);
    }
    full
}

/// A negative number given to a flag that takes a count (clap reads `-1` as an unknown flag):
/// the range message, naming the flag and the value.
fn negative_value(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() != ErrorKind::UnknownArgument {
        return None;
    }
    let Some(ContextValue::String(value)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    // clap names `-4` of `-40` (a cluster of short flags), so look for the whole value
    let args: Vec<String> = std::env::args().collect();
    let at = args
        .iter()
        .position(|a| a.starts_with(value.as_str()) && a.parse::<f64>().is_ok_and(|v| v < 0.0))?;
    let (flag, value) = (
        args[..at].last().filter(|f| f.starts_with("--"))?,
        &args[at],
    );
    Some(format!(
        "{flag}: expected a value of at least 0 (its range is in --help), found {value}"
    ))
}

/// `--prediction-type`: `epsilon` or `v_prediction`.
fn prediction_type(s: &str) -> std::result::Result<Prediction, String> {
    Prediction::parse(s).ok_or_else(|| format!("expected epsilon or v_prediction, found {s:?}"))
}

fn main() -> ExitCode {
    use clap::error::ErrorKind;
    dydiff::backend::cpu::tune_allocator();
    // Under an MPI launcher, what every rank would say alike is said by rank 0 only.
    let speaks = distributed::launcher().is_none_or(|l| l.rank == 0);
    let cli = match Cli::try_parse_from(with_recorded_flags(std::env::args().collect())) {
        Ok(cli) => cli,
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            if !speaks {
                return ExitCode::SUCCESS;
            }
            e.exit()
        }
        Err(e) => {
            if speaks {
                match negative_value(&e) {
                    Some(m) => eprintln!("dydiff: error: {m}"),
                    None => eprintln!("dydiff: error: {} (see dydiff --help)", one_line(&e)),
                }
            }
            return ExitCode::from(2);
        }
    };
    // MPI stays initialised until `main` returns (finalised when this drops)
    let _membership = match distributed::init() {
        Ok(s) => s,
        Err(e) => {
            if speaks {
                eprintln!("dydiff: error: {e}");
            }
            return ExitCode::FAILURE;
        }
    };
    // An interrupted command leaves none of its temporaries behind.
    if let Err(e) = dydiff::io::atomic::remove_temporaries_on_signal() {
        eprintln!("dydiff: error: cannot install the interrupt handler: {e}");
        return ExitCode::FAILURE;
    }
    if distributed::launcher().is_some() {
        dydiff::io::atomic::quiet_on_interrupt();
    }
    let w = world();
    let mut result = run(cli);
    // Every rank ends the command with an agreement, unless its error was agreed on already.
    if w.size() > 1
        && w.outside_collectives()
        && !matches!(result, Err(Error::OnRank { .. } | Error::OtherRank))
    {
        result = w.agree(result);
    }
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        // another rank reports the error every rank learnt of
        Err(Error::OtherRank) => ExitCode::FAILURE,
        Err(e @ Error::OnRank { .. }) => {
            eprintln!("dydiff: error: {}", e.to_string().replace('\n', " "));
            ExitCode::FAILURE
        }
        Err(e) => {
            let msg = e.to_string().replace('\n', " ");
            if w.size() > 1 {
                // the other ranks may be waiting for this one: end them all
                eprintln!("dydiff: error: rank {} of {}: {msg}", w.rank(), w.size());
                w.abort(1)
            }
            eprintln!("dydiff: error: {msg}");
            ExitCode::FAILURE
        }
    };
    code
}
