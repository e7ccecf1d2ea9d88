//! The `dydiff` command line (docs/cli.md). This file only parses flags into the options structs of
//! [`dydiff::pipelines`] and reports errors as one line on stderr with a non-zero exit.

use clap::{Args, Parser, Subcommand};
use dydiff::backend::cuda::Precision;
use dydiff::distributed::{self, world};
use dydiff::pipelines::{bench, data, denoise, eval, sample, train};
use dydiff::{Device, Error, Result};
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
    /// How the network's products multiply: fp32, tf32 (the GPU's tensor cores, operands rounded
    /// to 10 mantissa bits) or bf16 (operands rounded to 7 mantissa bits: the GPU's tensor cores,
    /// and CPUs with AVX512-BF16), float32 accumulation. Storage is float32; the CPU computes
    /// tf32 as fp32, and bf16 too where it lacks AVX512-BF16 (dydiff info says).
    #[arg(long, global = true, default_value = "tf32", value_enum)]
    precision: Precision,
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
    Sample(sample::SampleOptions),
    /// One evaluation of a diffusers UNet2DModel: reads an (N, in_channels, H, W) float32 .npy,
    /// writes the network output (N, out_channels, H, W).
    Denoise(denoise::DenoiseOptions),
    /// Trains a model on sequences (N, L, C, H, W): Dynamical Diffusion, the standard diffusion
    /// model with --dyn-eta 0, or DYffusion with --method dyffusion (interpolator, then
    /// forecaster). Writes the model folder (EMA weights), a resumable training state and the
    /// training log (per stage for DYffusion), all together at each checkpoint.
    ///
    /// Built with the mpi feature and started by mpirun or srun, training is data-parallel: the
    /// ranks share each --batch, sum their gradients (NCCL between GPUs), and rank 0 writes the
    /// checkpoints (docs/distributed.md).
    Train(train::TrainOptions),
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
    NavierStokes(data::NavierStokesOptions),
    /// A damped mass–spring mesh, the spring-mesh forecasting benchmark: 10 × 10 unit masses on
    /// the integer grid, the top row fixed, a spring of constant 1 between every pair of
    /// horizontal, vertical and diagonal neighbours (342 springs, at rest at length 1 or √2),
    /// damping force −γ·velocity. Each free node starts displaced uniformly within a disc of
    /// radius 0.35, at rest; semi-implicit Euler with --substeps steps per snapshot. Writes
    /// (N, L, 4, 10, 10) float32: channels momentum p_x, p_y and position q_x, q_y (unit masses,
    /// so momentum = velocity), rows y from the fixed top row 0, columns x; snapshot 0 is the
    /// initial state. Reproducible by --seed.
    SpringMesh(data::SpringMeshOptions),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Times the UNet forward pass on random input; prints a JSON report with GFLOP/s and a
    /// per-operation breakdown.
    Unet(bench::BenchOptions),
    /// Times one training step (forward, MSE loss, backward, clipping, AdamW + EMA) on random
    /// data; prints a JSON report with GFLOP/s and a per-operation breakdown.
    Train(bench::BenchOptions),
    /// Measures the machine's fp32 fused multiply-add peak (GFLOP/s on one thread and on all).
    Peak,
    /// Measures a model's noise-prediction error on sequences at fixed timesteps: the mean
    /// squared error of ε̂ against ε̃ per diffused frame, and over the future frames (the ones
    /// every process forecasts), as a JSON report. A diagnostic of how well a network learned
    /// its process; windows and noise are drawn as for training's validation, from --seed.
    Noise(bench::NoiseOptions),
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
    dydiff::backend::cuda::set_precision(cli.common.precision);
    dydiff::backend::cpu::set_precision(cli.common.precision);
    let size = world().size();
    if size > 1 && !matches!(cli.command, Command::Train(_) | Command::Sample(_)) {
        return Err(Error::Invalid(format!(
            "started as {size} ranks: only `dydiff train` and `dydiff sample` run on several ranks (docs/distributed.md); run this command as one process"
        )));
    }
    let device = match cli.command {
        Command::Info => return Ok(Device::Cpu),
        _ => Device::parse(&cli.common.device)?,
    };
    let cpu_precision = dydiff::backend::cpu::precision();
    if device == Device::Cpu
        && cli.common.precision == Precision::Bf16
        && cpu_precision != Precision::Bf16
        && world().is_root()
    {
        eprintln!("dydiff: note: --precision bf16: this CPU has no AVX512-BF16, so it computes in float32");
    }
    Ok(device)
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
        Command::Denoise(o) => denoise::run(&denoise::DenoiseOptions { device, ..o }),
        Command::Sample(o) => sample::run(&sample::SampleOptions { device, ..o }).map(|report| {
            if world().is_root() {
                eprintln!("dydiff: {report}")
            }
        }),
        Command::Train(o) => train::run(&train::TrainOptions { device, ..o }),
        Command::Eval(o) => eval::run(&o).map(|_| ()),
        Command::Data(DataCommand::NavierStokes(o)) => data::navier_stokes(&o),
        Command::Data(DataCommand::SpringMesh(o)) => data::spring_mesh(&o),
        Command::Bench(BenchCommand::Unet(o)) => {
            print_report(bench::run(&bench::BenchOptions { device, ..o })?)
        }
        Command::Bench(BenchCommand::Train(o)) => {
            print_report(bench::run_train(&bench::BenchOptions { device, ..o })?)
        }
        Command::Bench(BenchCommand::Peak) => print_report(bench::peak()?),
        Command::Bench(BenchCommand::Noise(o)) => {
            print_report(bench::noise_error(&bench::NoiseOptions { device, ..o })?)
        }
    }
}

/// A benchmark's report on stdout, one line.
fn print_report(report: impl std::fmt::Display) -> Result<()> {
    dydiff::io::print_stdout(&format!("{report}\n"))
}

/// `dydiff info`: the CPU, then what the CUDA backend says (docs/devices.md).
fn print_info() -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut lines = vec![format!(
        "cpu: {cores} core{} ({})",
        if cores == 1 { "" } else { "s" },
        std::env::consts::ARCH
    )];
    lines.push(format!(
        "cpu: bf16 products (--precision bf16): {}",
        if dydiff::backend::cpu::amx::available() {
            "AMX-BF16 tiles (tdpbf16ps)"
        } else if dydiff::backend::cpu::bf16::available() {
            "AVX512-BF16 (vdpbf16ps)"
        } else {
            "none on this CPU (float32 instead)"
        }
    ));
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
    if subcommand(&args) != Some("train") || !args.iter().any(|a| a == "--resume") {
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

/// The subcommand of a command line: its first word that is neither a global flag (`--threads`,
/// `--device`, `--precision`, with their values) nor another flag.
fn subcommand(args: &[String]) -> Option<&str> {
    use clap::CommandFactory;
    let cli = Cli::command();
    let takes_value = |a: &str| {
        cli.get_arguments()
            .any(|arg| arg.get_long() == a.strip_prefix("--") && arg.get_action().takes_values())
    };
    let mut words = args.iter().skip(1);
    while let Some(a) = words.next() {
        if takes_value(a) {
            words.next();
        } else if !a.starts_with('-') {
            return Some(a);
        }
    }
    None
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
