//! The spring-mesh generator (`dydiff data spring-mesh`) against the mechanics it claims: the
//! mesh's springs, energy conservation without damping at the order symplectic Euler promises,
//! a mesh at rest staying at rest, the fixed row, momentum as the time derivative of position,
//! the documented random-number layout, and the file's shape and reproducibility.

use crate::common::{assert_clean_failure, dydiff, Scratch};
use dydiff::data::spring_mesh::{
    initial_displacements, springs, Mesh, DEFAULT_DT, INIT_RADIUS, NODES, SIDE, SNAPSHOT_LEN,
    SPRINGS,
};
use dydiff::io::npy;
use dydiff::rng::philox4x32_10;

/// `∇V` of the spring potential at the mesh's positions: `Σ_b (|d| − L)·d/|d|` per node.
fn potential_gradient(m: &Mesh) -> Vec<[f64; 2]> {
    let mut g = vec![[0.0; 2]; NODES];
    for s in &m.springs {
        let (qa, qb) = (m.positions[s.a], m.positions[s.b]);
        let d = [qa[0] - qb[0], qa[1] - qb[1]];
        let len = (d[0] * d[0] + d[1] * d[1]).sqrt();
        let k = (len - s.rest) / len;
        for c in 0..2 {
            g[s.a][c] += k * d[c];
            g[s.b][c] -= k * d[c];
        }
    }
    g
}

/// `p·∇V` over the free nodes.
fn power(m: &Mesh) -> f64 {
    potential_gradient(m)
        .iter()
        .zip(&m.velocities)
        .zip(&m.fixed)
        .filter(|(_, &f)| !f)
        .map(|((g, v), _)| g[0] * v[0] + g[1] * v[1])
        .sum()
}

#[test]
fn the_mesh_has_342_springs_of_rest_length_1_or_sqrt2() {
    let s = springs();
    assert_eq!(s.len(), SPRINGS);
    assert_eq!(s.len(), 342);
    let ones = s.iter().filter(|s| s.rest == 1.0).count();
    let diagonals = s.iter().filter(|s| s.rest == 2f64.sqrt()).count();
    assert_eq!((ones, diagonals), (180, 162));
    // Every pair at Chebyshev distance 1, once, and nothing else.
    let mut pairs: Vec<(usize, usize)> = s.iter().map(|s| (s.a, s.b)).collect();
    pairs.sort();
    pairs.dedup();
    assert_eq!(pairs.len(), 342, "a pair is joined twice");
    for sp in &s {
        let (xa, ya) = ((sp.a % SIDE) as i64, (sp.a / SIDE) as i64);
        let (xb, yb) = ((sp.b % SIDE) as i64, (sp.b / SIDE) as i64);
        assert_eq!((xa - xb).abs().max((ya - yb).abs()), 1, "{sp:?}");
        let dist = (((xa - xb).pow(2) + (ya - yb).pow(2)) as f64).sqrt();
        assert_eq!(sp.rest, dist, "{sp:?}");
    }
    // The top row is the fixed one.
    let m = Mesh::initial(0, 0);
    assert_eq!(m.fixed.iter().filter(|&&f| f).count(), SIDE);
    assert!(m.fixed[..SIDE].iter().all(|&f| f));
}

/// Energy without damping, over the benchmark's full run (805 snapshots, 128 substeps each,
/// `Δτ = 2π/804/128 ≈ 6.1·10⁻⁵`).
///
/// The bound. Semi-implicit Euler (`p ← p − Δτ∇V(q)`, then `q ← q + Δτ·p`) is symplectic; it
/// conserves the modified energy `H̃ = H − (Δτ/2)·p·∇V(q) + O(Δτ²)` up to terms far below
/// `Δτ²` over this run (backward error analysis; for `V = q²/2` the quadratic
/// `H − (Δτ/2)·q·p` is conserved exactly). From rest (`p = 0` at the start), the energy error
/// is therefore `H(t) − H(0) = (Δτ/2)·p·∇V + O(Δτ²)`. For this mesh `|∇V|² ≤ 32·V`: by
/// Cauchy–Schwarz over a node's at most 8 springs, `|∇V_a|² ≤ 8·Σ_b e_ab²` (`e` a spring's
/// extension), and each spring is counted at its two nodes, `Σ_a Σ_b e_ab² ≤ 2·Σ e² = 4V`. With
/// `|p|² = 2K`, `|p·∇V| ≤ √(2K·32V) = 8√(KV) ≤ 4E`, so
///
/// `|H(t) − H(0)| ≤ 2·Δτ·E + O(Δτ²)`  (≈ 1.2·10⁻⁴ of the energy).
///
/// The test checks the drift stays under that bound, that the bound is not trivially loose (the
/// energy is thousands of times larger than it, and the energy really moves between kinetic and
/// potential), that the drift is first order (it halves with `Δτ`), and that it is the predicted
/// `(Δτ/2)·p·∇V` (what is left is of order `Δτ²`) — which also pins down the update order.
#[test]
fn energy_drift_without_damping_is_bounded_and_first_order() {
    // Largest |H(t) − H(0)| and largest |H(t) − H(0) − (Δτ/2)·p·∇V| over the snapshots.
    let run = |substeps: usize| {
        let dtau = DEFAULT_DT / substeps as f64;
        let mut m = Mesh::initial(3, 1);
        let e0 = m.energy();
        let (mut drift, mut residual, mut max_kinetic) = (0.0f64, 0.0f64, 0.0f64);
        for _ in 1..805 {
            for _ in 0..substeps {
                m.step(dtau, 0.0);
            }
            let dh = m.energy() - e0;
            drift = drift.max(dh.abs());
            residual = residual.max((dh - 0.5 * dtau * power(&m)).abs());
            max_kinetic = max_kinetic.max(m.kinetic_energy());
        }
        (e0, dtau, drift, residual, max_kinetic)
    };
    let (e0, dtau, drift, residual, max_kinetic) = run(128);
    let bound = 2.0 * dtau * e0;
    eprintln!(
        "energy {e0:.6}, Δτ {dtau:.3e}: drift {drift:.3e} = {:.3e} of the energy, bound {bound:.3e}, \
         residual after the (Δτ/2)·p·∇V term {residual:.3e}",
        drift / e0
    );
    assert!(
        e0 > 1e3 * bound,
        "the bound {bound} is trivially loose for energy {e0}"
    );
    assert!(
        max_kinetic > 0.2 * e0,
        "the mesh barely moved: kinetic energy at most {max_kinetic} of {e0}"
    );
    assert!(drift < 0.75 * bound, "drift {drift} vs bound {bound}");
    assert!(drift > 1e-3 * bound, "drift {drift} unmeasurably small");
    assert!(
        residual < 1e-3 * drift,
        "the drift is not (Δτ/2)·p·∇V: residual {residual} of drift {drift}"
    );
    // Half the step, half the drift.
    let (_, _, drift2, _, _) = run(256);
    let ratio = drift / drift2;
    eprintln!("drift at Δτ/2 {drift2:.3e}, ratio {ratio:.3}");
    assert!((1.8..2.2).contains(&ratio), "drift ratio {ratio}");
}

#[test]
fn damping_removes_energy() {
    let mut m = Mesh::initial(0, 0);
    let e0 = m.energy();
    let dtau = DEFAULT_DT / 128.0;
    for _ in 0..804 * 128 {
        m.step(dtau, 0.1);
    }
    // dE/dt = −γ|p|² ≤ 0: over 2π the mesh loses a good part of its energy.
    let e1 = m.energy();
    assert!(e1 < 0.8 * e0, "energy {e0} -> {e1}");
}

#[test]
fn a_mesh_at_rest_stays_exactly_at_rest() {
    let mut m = Mesh::new(&[[0.0; 2]; NODES]);
    let start = m.positions.clone();
    for (k, q) in start.iter().enumerate() {
        assert_eq!(*q, [(k % SIDE) as f64, (k / SIDE) as f64]);
    }
    for _ in 0..20_000 {
        m.step(DEFAULT_DT / 128.0, 0.1);
    }
    assert_eq!(m.positions, start);
    assert!(m.velocities.iter().all(|v| *v == [0.0, 0.0]));
    assert_eq!(m.energy(), 0.0);
    let mut snap = Vec::new();
    m.write_snapshot(&mut snap);
    assert_eq!(snap.len(), SNAPSHOT_LEN);
    assert!(snap[..2 * NODES].iter().all(|&p| p == 0.0));
}

/// The documented layout (docs/random.md, “Streams”, purpose 7), computed here from the Philox
/// function itself, and the displacements' distribution: uniform by area in the disc.
#[test]
fn initial_displacements_follow_the_documented_layout() {
    let (seed, n) = (0x1234_5678_9abc_def0u64, 77u32);
    let d = initial_displacements(seed, n);
    for (k, dk) in d.iter().enumerate() {
        if k < SIDE {
            assert_eq!(*dk, [0.0, 0.0]);
            continue;
        }
        let w = philox4x32_10([k as u32, 0, n, 7 << 24], [0x9abc_def0, 0x1234_5678]);
        let u = (f64::from(w[0]) + 0.5) / 4_294_967_296.0;
        let v = (f64::from(w[1]) + 0.5) / 4_294_967_296.0;
        let r = 0.35 * u.sqrt();
        let a = 2.0 * std::f64::consts::PI * v;
        assert_eq!(*dk, [r * a.cos(), r * a.sin()], "node {k}");
    }
    let m = Mesh::initial(seed, n);
    assert_eq!(m.positions[55], [5.0 + d[55][0], 5.0 + d[55][1]]);
    // Uniform by area: r²/R² is uniform on [0, 1) (mean ½, standard error 0.29/√18000 ≈ 0.002),
    // the angle uniform (mean cosine 0, standard error 0.71/√18000 ≈ 0.005).
    let (mut r2, mut cos, mut count) = (0.0, 0.0, 0.0);
    for s in 0..200 {
        for p in &initial_displacements(9, s)[SIDE..] {
            let rr = (p[0] * p[0] + p[1] * p[1]) / (INIT_RADIUS * INIT_RADIUS);
            assert!(rr < 1.0);
            r2 += rr;
            cos += p[0] / rr.sqrt() / INIT_RADIUS;
            count += 1.0;
        }
    }
    assert!((r2 / count - 0.5).abs() < 0.01, "mean r²/R² {}", r2 / count);
    assert!((cos / count).abs() < 0.025, "mean cosine {}", cos / count);
}

/// Runs `dydiff data spring-mesh` with `args` into `s/name` and reads the file.
fn generate(s: &Scratch, name: &str, args: &[&str]) -> npy::Array {
    let out = s.path(name);
    let mut all = vec!["data", "spring-mesh", "--out", out.to_str().unwrap()];
    all.extend(args);
    let (ok, err) = dydiff(&all);
    assert!(ok, "{err}");
    let bytes = std::fs::read(&out).unwrap();
    let header = String::from_utf8_lossy(&bytes[..128]);
    assert!(header.contains("'descr': '<f4'"), "not float32: {header}");
    npy::read(&out).unwrap()
}

/// Value `(n, t, c, y, x)` of a `(N, L, 4, 10, 10)` array.
fn at(a: &npy::Array, n: usize, t: usize, c: usize, y: usize, x: usize) -> f32 {
    let l = a.shape[1];
    a.data[(((n * l + t) * 4 + c) * SIDE + y) * SIDE + x]
}

#[test]
fn the_file_has_the_layout_and_does_not_depend_on_threads_or_sample_count() {
    let s = Scratch::new("mesh");
    let a = generate(
        &s,
        "a.npy",
        &["--samples", "3", "--frames", "40", "--seed", "5"],
    );
    assert_eq!(a.shape, [3, 40, 4, 10, 10]);
    // Snapshot 0 is the initial state of (seed, n), channels p_x, p_y, q_x, q_y.
    for n in 0..3 {
        let mut want = Vec::new();
        Mesh::initial(5, n as u32).write_snapshot(&mut want);
        assert_eq!(a.data[n * 40 * SNAPSHOT_LEN..][..SNAPSHOT_LEN], want[..]);
    }
    assert_eq!(at(&a, 0, 0, 2, 4, 7).round(), 7.0, "q_x is the column");
    assert_eq!(at(&a, 0, 0, 3, 4, 7).round(), 4.0, "q_y is the row");
    // Snapshots evolve, samples differ.
    assert_ne!(at(&a, 1, 0, 2, 5, 5), at(&a, 1, 39, 2, 5, 5));
    assert_ne!(at(&a, 0, 39, 3, 5, 5), at(&a, 1, 39, 3, 5, 5));
    // One thread, the same bytes; fewer samples, the same first samples; another seed, another
    // mesh.
    assert_eq!(
        generate(
            &s,
            "b.npy",
            &[
                "--samples",
                "3",
                "--frames",
                "40",
                "--seed",
                "5",
                "--threads",
                "1"
            ]
        ),
        a
    );
    let c = generate(
        &s,
        "c.npy",
        &["--samples", "2", "--frames", "40", "--seed", "5"],
    );
    assert_eq!(c.data[..], a.data[..2 * 40 * SNAPSHOT_LEN]);
    let d = generate(
        &s,
        "d.npy",
        &["--samples", "1", "--frames", "40", "--seed", "6"],
    );
    assert_ne!(d.data[..], a.data[..40 * SNAPSHOT_LEN]);
}

/// The defaults are the documented ones: 16 samples of 805 snapshots, seed 0, damping 0.1,
/// 128 substeps, `Δt = 2π/804`.
#[test]
fn defaults_are_the_documented_values() {
    let s = Scratch::new("mesh-defaults");
    let a = generate(&s, "a.npy", &[]);
    assert_eq!(a.shape, [16, 805, 4, 10, 10]);
    let dt = (2.0 * std::f64::consts::PI / 804.0).to_string();
    let b = generate(
        &s,
        "b.npy",
        &[
            "--samples",
            "1",
            "--frames",
            "805",
            "--seed",
            "0",
            "--damping",
            "0.1",
            "--substeps",
            "128",
            "--dt",
            &dt,
        ],
    );
    assert_eq!(b.data[..], a.data[..805 * SNAPSHOT_LEN]);
}

#[test]
fn the_top_row_never_moves() {
    let s = Scratch::new("mesh-fixed");
    let a = generate(&s, "a.npy", &["--samples", "2", "--frames", "200"]);
    let mut free_moved = false;
    for n in 0..2 {
        for t in 0..200 {
            for x in 0..SIDE {
                assert_eq!(at(&a, n, t, 0, 0, x), 0.0);
                assert_eq!(at(&a, n, t, 1, 0, x), 0.0);
                assert_eq!(at(&a, n, t, 2, 0, x), x as f32);
                assert_eq!(at(&a, n, t, 3, 0, x), 0.0);
            }
            free_moved |= at(&a, n, t, 0, 1, 3).abs() > 1e-3;
        }
    }
    assert!(free_moved, "the free nodes never moved");
}

/// The written momentum is the time derivative of the written position. Against the central
/// difference `(q[t+1] − q[t−1])/(2Δt)`, whose error is `Δt²/6·q⃛ + O(Δt⁴)`, the error falls 4×
/// when `Δt` halves. Both runs take the same integrator step `Δτ ≈ 1.2·10⁻⁵` (so they follow the
/// same discrete trajectory, and the `O(Δτ)` offset between the velocity and the positions'
/// difference is far below the `Δt²` term), and `Δt` is large enough (0.1 and 0.05) for float32
/// rounding of the positions (≈ 5·10⁻⁷) to be negligible after dividing by `2Δt`.
#[test]
fn momentum_is_the_time_derivative_of_position() {
    let s = Scratch::new("mesh-fd");
    // RMS of p[t] − (q[t+1] − q[t−1])/(2Δt) over the free nodes at times 0.1, 0.2, …, 1.9.
    let error = |name: &str, dt: f64, per: usize| {
        let frames = 20 * per + 1;
        let a = generate(
            &s,
            name,
            &[
                "--samples",
                "2",
                "--frames",
                &frames.to_string(),
                "--dt",
                &dt.to_string(),
                "--substeps",
                &(8192 / per).to_string(),
            ],
        );
        let (mut sum, mut count, mut scale) = (0.0, 0.0, 0.0f64);
        for n in 0..2 {
            for t in (per..frames - 1).step_by(per) {
                for y in 1..SIDE {
                    for x in 0..SIDE {
                        for c in 0..2 {
                            let q = |t| f64::from(at(&a, n, t, 2 + c, y, x));
                            let p = f64::from(at(&a, n, t, c, y, x));
                            let fd = (q(t + 1) - q(t - 1)) / (2.0 * dt);
                            sum += (p - fd).powi(2);
                            count += 1.0;
                            scale = scale.max(p.abs());
                        }
                    }
                }
            }
        }
        ((sum / count).sqrt(), scale)
    };
    let (coarse, scale) = error("coarse.npy", 0.1, 1);
    let (fine, _) = error("fine.npy", 0.05, 2);
    let ratio = coarse / fine;
    eprintln!("central-difference error: {coarse:.3e} at Δt 0.1, {fine:.3e} at Δt 0.05, ratio {ratio:.3}; momentum up to {scale:.3}");
    assert!(coarse < 0.02 * scale, "error {coarse} vs momentum {scale}");
    assert!(
        (3.6..4.4).contains(&ratio),
        "ratio {ratio}, not second order"
    );
}

#[test]
fn bad_flags_are_one_clear_line() {
    let s = Scratch::new("mesh-bad");
    let out = s.path("x.npy");
    for (flag, value, needle) in [
        ("--samples", "0", "--samples"),
        ("--samples", "4294967297", "--samples"),
        ("--frames", "0", "--frames"),
        ("--substeps", "0", "--substeps"),
        ("--dt", "-1", "--dt"),
        ("--dt", "0", "--dt"),
        ("--dt", "nan", "--dt"),
        ("--dt", "inf", "--dt"),
        ("--damping", "-0.1", "--damping"),
        ("--damping", "nan", "--damping"),
        ("--frames", "x", "--frames"),
    ] {
        let pair = format!("{flag}={value}");
        let (ok, err) = dydiff([
            "data",
            "spring-mesh",
            "--out",
            out.to_str().unwrap(),
            "--frames",
            "3",
            &pair,
        ]);
        assert_clean_failure(ok, &err, &[needle], &out, &s);
    }
    // Found values are named.
    let (_, err) = dydiff([
        "data",
        "spring-mesh",
        "--out",
        out.to_str().unwrap(),
        "--dt=-1",
    ]);
    assert!(err.contains("-1") && err.contains("positive"), "{err}");
    // A file far beyond memory is refused before anything is simulated.
    let (ok, err) = dydiff([
        "data",
        "spring-mesh",
        "--out",
        out.to_str().unwrap(),
        "--samples",
        "4294967296",
    ]);
    assert_clean_failure(ok, &err, &["--samples", "memory"], &out, &s);
    // An output in a missing directory is refused first.
    let missing = s.path("nowhere/x.npy");
    let (ok, err) = dydiff(["data", "spring-mesh", "--out", missing.to_str().unwrap()]);
    assert_clean_failure(ok, &err, &["--out"], &missing, &s);
    // A step far beyond stability: the run stops naming the sample and the flags to change.
    let (ok, err) = dydiff([
        "data",
        "spring-mesh",
        "--out",
        out.to_str().unwrap(),
        "--samples",
        "2",
        "--frames",
        "300",
        "--dt",
        "20",
        "--substeps",
        "1",
    ]);
    assert_clean_failure(
        ok,
        &err,
        // refused before any work: the step against the mesh's highest frequency
        &["highest frequency", "--dt 20", "--substeps"],
        &out,
        &s,
    );
}

/// The mesh's highest frequency against numpy's `eigvalsh` of the same stiffness matrix
/// (2.776102551651391, computed independently from the layout of docs/data.md), to 1e-6 (power
/// iteration converges slowly: the next eigenvalue is close).
#[test]
fn the_highest_frequency_is_the_stiffness_matrix_s() {
    let w = Mesh::highest_frequency();
    assert!((w - 2.776_102_551_651_391).abs() < 1e-6, "{w}");
}

/// Steps beyond the integrator's stability are refused before any work (they exploded to 1e30 or
/// grew the energy 3000-fold); one just inside it runs 800 undamped frames without the energy
/// bound tripping, and the default settings are far inside.
#[test]
fn unstable_steps_are_refused_before_any_work() {
    let s = Scratch::new("spring-unstable");
    let out = s.path("m.npy");
    for dt in ["0.9", "0.6"] {
        let (ok, err) = dydiff([
            "data",
            "spring-mesh",
            "--out",
            out.to_str().unwrap(),
            "--substeps",
            "1",
            "--dt",
            dt,
            "--frames",
            "40",
        ]);
        assert_clean_failure(
            ok,
            &err,
            &[&format!("--dt {dt}"), "--substeps", "highest frequency"],
            &out,
            &s,
        );
    }
    let (ok, err) = dydiff([
        "data",
        "spring-mesh",
        "--out",
        out.to_str().unwrap(),
        "--substeps",
        "1",
        "--dt",
        "0.36",
        "--frames",
        "800",
        "--samples",
        "2",
        "--damping",
        "0",
    ]);
    assert!(ok, "{err}");
    let a = npy::read(&out).unwrap();
    assert!(a.data.iter().all(|v| v.abs() < 20.0));
}

/// docs/data.md, “Channel names”: the generator records its channels beside the file (the
/// positions with their rest place on the grid), and `eval` names its per-channel scores from
/// the truth's record.
#[test]
fn the_channels_are_recorded_and_name_the_scores() {
    let s = Scratch::new("mesh-channels");
    let truth = generate(&s, "t.npy", &["--samples", "2", "--frames", "6"]);
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.path("t.channels.json")).unwrap()).unwrap();
    assert_eq!(record["generator"], "spring-mesh");
    let names: Vec<(&str, Option<&str>)> = record["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["rest"].as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("p_x", None),
            ("p_y", None),
            ("q_x", Some("column")),
            ("q_y", Some("row"))
        ]
    );
    // a forecast of the last two snapshots: two members, the truth ± 0.01
    let e = 4 * SIDE * SIDE;
    let mut fc = Vec::new();
    for n in 0..2 {
        for sign in [1.0f32, -1.0] {
            let frames = &truth.data[(n * 6 + 4) * e..][..2 * e];
            fc.extend(frames.iter().map(|v| v + 0.01 * sign));
        }
    }
    let forecast = s.path("f.npy");
    std::fs::write(&forecast, npy::encode(&[2, 2, 2, 4, SIDE, SIDE], &fc)).unwrap();
    let json = s.path("r.json");
    let (ok, err) = dydiff([
        "eval",
        "--forecast",
        forecast.to_str().unwrap(),
        "--truth",
        s.path("t.npy").to_str().unwrap(),
        "--truth-start",
        "4",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let scored: Vec<&str> = report["per_channel"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(scored, ["p_x", "p_y", "q_x", "q_y"]);
}
