//! The Navier–Stokes generator (`dydiff data navier-stokes`) against analytic solutions and
//! invariants: Taylor–Green decay, the forced Kolmogorov mode's exact response, energy and
//! enstrophy conservation without viscosity, drag or forcing, and divergence-free output.

use crate::common::{dydiff, Scratch};
use dydiff::data::navier_stokes::{initial_vorticity, Flow, FlowSettings};
use dydiff::io::npy;
use rustfft::num_complex::Complex64;
use rustfft::FftPlanner;
use std::f64::consts::PI;

fn settings(r: usize, viscosity: f64, drag: f64, forcing: f64, dt: f64) -> FlowSettings {
    FlowSettings {
        resolution: r,
        viscosity,
        drag,
        forcing,
        forcing_wavenumber: 4.0,
        dt,
    }
}

fn grid(r: usize, f: impl Fn(f64, f64) -> f64) -> Vec<f64> {
    (0..r * r)
        .map(|p| {
            let (y, x) = (
                2.0 * PI * (p / r) as f64 / r as f64,
                2.0 * PI * (p % r) as f64 / r as f64,
            );
            f(x, y)
        })
        .collect()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// `ω = cos(mx)·cos(my)` is an eigenfunction of the Laplacian with `ψ ∝ ω`, so advection
/// vanishes and `ω(t) = ω(0)·e^{−(ν·2m² + μ)t}`.
#[test]
fn taylor_green_decays_at_the_analytic_rate() {
    let r = 32;
    for (m, nu, mu) in [(1.0, 0.01, 0.0), (3.0, 0.002, 0.05)] {
        let w0 = grid(r, |x, y| 2.0 * m * (m * x).cos() * (m * y).cos());
        let mut flow = Flow::new(settings(r, nu, mu, 0.0, 0.01), &w0);
        for _ in 0..150 {
            flow.step();
        }
        let decay = (-(nu * 2.0 * m * m + mu) * 1.5f64).exp();
        let want: Vec<f64> = w0.iter().map(|v| v * decay).collect();
        let err = max_abs_diff(&flow.vorticity(), &want);
        assert!(err < 1e-10 * 2.0 * m, "m = {m}: error {err}");
        assert!(decay < 0.99, "the test must see decay");
    }
}

/// From rest, the Kolmogorov forcing `f = −A·k_f·cos(k_f y)` drives only its own mode:
/// `ω(t) = f/λ·(1 − e^{−λt})` with `λ = ν·k_f² + μ`.
#[test]
fn forced_mode_responds_exactly() {
    let (r, nu, mu, a) = (32, 0.01, 0.1, 1.5);
    let mut flow = Flow::new(settings(r, nu, mu, a, 0.01), &vec![0.0; r * r]);
    for _ in 0..200 {
        flow.step();
    }
    let lambda = nu * 16.0 + mu;
    let g = (1.0 - (-lambda * 2.0f64).exp()) / lambda;
    let want = grid(r, |_, y| -a * 4.0 * (4.0 * y).cos() * g);
    let err = max_abs_diff(&flow.vorticity(), &want);
    assert!(err < 1e-9, "error {err}");
}

/// Without viscosity, drag and forcing, the dealiased system conserves energy and enstrophy;
/// IF-RK4 changes them only at the time-stepping error.
#[test]
fn energy_and_enstrophy_are_conserved_without_viscosity() {
    let r = 32;
    let w0 = initial_vorticity(r, 5, 0);
    let mut flow = Flow::new(settings(r, 0.0, 0.0, 0.0, 0.005), &w0);
    let (e0, z0) = flow.invariants();
    let before = flow.vorticity();
    for _ in 0..400 {
        flow.step();
    }
    let (e1, z1) = flow.invariants();
    assert!(((e1 - e0) / e0).abs() < 1e-7, "energy {e0} -> {e1}");
    assert!(((z1 - z0) / z0).abs() < 1e-6, "enstrophy {z0} -> {z1}");
    // ... while the flow itself has moved.
    let moved = max_abs_diff(&flow.vorticity(), &before);
    assert!(moved > 0.1, "the flow barely changed ({moved})");
}

/// Spectral derivative along x (`axis = 1`) or y (`axis = 0`) of an `r × r` field.
fn derivative(f: &[f32], r: usize, axis: usize) -> Vec<f64> {
    let mut p = FftPlanner::new();
    let (fwd, inv) = (p.plan_fft_forward(r), p.plan_fft_inverse(r));
    let mut out = vec![0.0; r * r];
    for line in 0..r {
        let idx = |i: usize| {
            if axis == 1 {
                line * r + i
            } else {
                i * r + line
            }
        };
        let mut a: Vec<Complex64> = (0..r)
            .map(|i| Complex64::new(f64::from(f[idx(i)]), 0.0))
            .collect();
        fwd.process(&mut a);
        for (i, v) in a.iter_mut().enumerate() {
            let k = if i < r / 2 {
                i as f64
            } else if i == r / 2 {
                0.0
            } else {
                i as f64 - r as f64
            };
            *v *= Complex64::new(0.0, k);
        }
        inv.process(&mut a);
        for i in 0..r {
            out[idx(i)] = a[i].re / r as f64;
        }
    }
    out
}

#[test]
fn generated_flows_are_divergence_free_turbulent_and_reproducible() {
    let s = Scratch::new("ns");
    let run = |name: &str, extra: &[&str]| {
        let out = s.path(name);
        let mut args = vec!["data", "navier-stokes", "--out", out.to_str().unwrap()];
        args.extend([
            "--samples",
            "3",
            "--frames",
            "4",
            "--resolution",
            "32",
            "--warmup",
            "1500",
        ]);
        args.extend(extra);
        let (ok, err) = dydiff(&args);
        assert!(ok, "{err}");
        npy::read(&out).unwrap()
    };
    let a = run("a.npy", &["--seed", "1"]);
    assert_eq!(a.shape, [3, 4, 2, 32, 32]);
    let r = 32;
    for seq in 0..3 {
        for f in 0..4 {
            let at = |c: usize| &a.data[((seq * 4 + f) * 2 + c) * r * r..][..r * r];
            let (u, v) = (at(0), at(1));
            let (ux, vy) = (derivative(u, r, 1), derivative(v, r, 0));
            let div = ux
                .iter()
                .zip(&vy)
                .map(|(a, b)| (a + b).abs())
                .fold(0.0, f64::max);
            let grad = ux.iter().map(|v| v.abs()).fold(0.0, f64::max);
            assert!(
                div < 1e-5 * grad,
                "sample {seq} frame {f}: divergence {div} vs gradient {grad}"
            );
            let rms = (u.iter().map(|v| f64::from(v * v)).sum::<f64>() / (r * r) as f64).sqrt();
            assert!(
                rms > 0.3,
                "sample {seq} frame {f}: a weak flow (rms u {rms})"
            );
        }
    }
    // Frames evolve, samples differ.
    let frame =
        |d: &[f32], seq: usize, f: usize| d[(seq * 4 + f) * 2 * r * r..][..2 * r * r].to_vec();
    assert_ne!(frame(&a.data, 0, 0), frame(&a.data, 0, 1));
    assert_ne!(frame(&a.data, 0, 3), frame(&a.data, 1, 3));
    // Same seed, other thread counts: the same bytes; another seed: another flow.
    assert_eq!(run("b.npy", &["--seed", "1", "--threads", "1"]), a);
    assert_ne!(run("c.npy", &["--seed", "2"]).data, a.data);
}

#[test]
fn bad_flags_are_one_clear_line() {
    let s = Scratch::new("ns-bad");
    let out = s.path("x.npy");
    for (flag, value, needle) in [
        ("--samples", "0", "--samples"),
        ("--resolution", "31", "--resolution"),
        ("--dt", "-1", "--dt"),
        ("--viscosity", "-0.1", "--viscosity"),
        ("--forcing-wavenumber", "40", "--forcing-wavenumber"),
    ] {
        let mut args = vec!["data", "navier-stokes", "--out", out.to_str().unwrap()];
        for (f, v) in [
            ("--samples", "1"),
            ("--frames", "2"),
            ("--resolution", "32"),
        ] {
            if f != flag {
                args.extend([f, v]);
            }
        }
        let pair = format!("{flag}={value}");
        args.push(&pair);
        let (ok, err) = dydiff(&args);
        assert!(
            !ok && err.trim_end().lines().count() == 1 && err.contains(needle),
            "{flag}: {err}"
        );
        assert!(!out.exists());
    }
    // A time step far beyond stability: the run stops with the sample and the advice.
    let (ok, err) = dydiff([
        "data",
        "navier-stokes",
        "--out",
        out.to_str().unwrap(),
        "--samples",
        "1",
        "--frames",
        "2",
        "--resolution",
        "32",
        "--dt",
        "5",
        "--warmup",
        "50",
    ]);
    assert!(
        !ok && err.contains("blew up") && err.contains("--dt"),
        "{err}"
    );
    assert!(!out.exists());
}
