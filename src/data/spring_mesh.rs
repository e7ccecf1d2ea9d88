//! A damped mass–spring mesh, the spring-mesh benchmark of the physical-simulation suites
//! (docs/data.md, “Generated spring mesh”):
//!
//! - [`SIDE`]` × `[`SIDE`] (10 × 10) nodes of unit mass, node `k = y·10 + x` starting at the
//!   integer position `(x, y)`; the top row (`y = 0`) is fixed and never moves;
//! - a spring of constant 1 between every pair of nodes at Chebyshev distance 1 (horizontal,
//!   vertical and both diagonals: [`SPRINGS`] = 342 springs), at rest at its initial length
//!   (1 or √2);
//! - the force on a free node `a`:
//!
//!   `F_a = −Σ_b (|d| − L_ab)·d/|d| − γ·q̇_a`,  `d = q_a − q_b`,
//!
//!   summed over its springs, with damping `γ` (0.1 by default);
//! - semi-implicit (symplectic) Euler: `v ← v + Δτ·F/m`, then `q ← q + Δτ·v`, all free nodes
//!   at once.
//!
//! With `γ = 0` the energy [`Mesh::energy`] (kinetic plus `½Σ(|d| − L)²`) is conserved by the
//! dynamics; symplectic Euler keeps its error bounded, of order `Δτ`, over any run.
//!
//! The initial state displaces every free node by a vector uniform by area in the disc of radius
//! [`INIT_RADIUS`] (0.35), at rest ([`Mesh::initial`]). Everything is computed in f64.

use crate::rng::{philox4x32_10, Purpose};
use std::f64::consts::TAU;

/// Nodes per side of the mesh.
pub const SIDE: usize = 10;
/// Nodes in the mesh, `SIDE²`.
pub const NODES: usize = SIDE * SIDE;
/// Springs in the mesh: 180 of rest length 1 and 162 of rest length √2.
pub const SPRINGS: usize = 342;
/// Radius of the disc the initial displacements are drawn from.
pub const INIT_RADIUS: f64 = 0.35;
/// Channels of a snapshot: `p_x, p_y, q_x, q_y` (momentum, position).
pub const CHANNELS: usize = 4;
/// Values in one snapshot, `(4, 10, 10)`.
pub const SNAPSHOT_LEN: usize = CHANNELS * NODES;
/// The damping coefficient `γ` of the benchmark.
pub const DEFAULT_DAMPING: f64 = 0.1;
/// Integrator steps per snapshot of the benchmark.
pub const DEFAULT_SUBSTEPS: usize = 128;
/// Snapshots per sequence of the benchmark.
pub const DEFAULT_FRAMES: usize = 805;
/// Time between snapshots of the benchmark, `Δt = 2π/804`.
pub const DEFAULT_DT: f64 = TAU / 804.0;

/// One spring: the nodes it joins (`a < b`, indices `y·10 + x`) and its rest length.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spring {
    pub a: usize,
    pub b: usize,
    pub rest: f64,
}

/// The springs of the mesh, in a fixed order: for each node `a` in index order, its neighbours
/// `b > a` to the right `(x+1, y)`, below-left `(x−1, y+1)`, below `(x, y+1)` and below-right
/// `(x+1, y+1)`. Rest lengths are the initial distances, `√(Δx² + Δy²)`: 1 or √2.
pub fn springs() -> Vec<Spring> {
    let mut out = Vec::with_capacity(SPRINGS);
    for y in 0..SIDE as i64 {
        for x in 0..SIDE as i64 {
            for (dx, dy) in [(1, 0), (-1, 1), (0, 1), (1, 1)] {
                let (nx, ny) = (x + dx, y + dy);
                if (0..SIDE as i64).contains(&nx) && (0..SIDE as i64).contains(&ny) {
                    let rest = ((dx * dx + dy * dy) as f64).sqrt();
                    out.push(Spring {
                        a: (y * SIDE as i64 + x) as usize,
                        b: (ny * SIDE as i64 + nx) as usize,
                        rest,
                    });
                }
            }
        }
    }
    out
}

/// The initial displacements of sample `sample` under `seed`, one `(dx, dy)` per node (row-major,
/// `k = y·10 + x`; the fixed row's are 0).
///
/// Free node `k` takes one Philox4x32-10 call (docs/random.md, “Streams”, purpose 7): key the
/// seed, counter `(k, 0, sample, 7·2²⁴)`. From its words `w0, w1`: `u = (w0 + ½)/2³²`,
/// `v = (w1 + ½)/2³²`, radius `0.35·√u`, angle `2πv`, displacement `(r·cos, r·sin)` — uniform by
/// area in the disc. So sample `n` does not depend on how many samples are drawn or in what order.
pub fn initial_displacements(seed: u64, sample: u32) -> [[f64; 2]; NODES] {
    const INV: f64 = 1.0 / 4_294_967_296.0;
    let key = [seed as u32, (seed >> 32) as u32];
    let c3 = (Purpose::MeshInit as u32) << 24;
    std::array::from_fn(|k| {
        if k < SIDE {
            return [0.0, 0.0];
        }
        let w = philox4x32_10([k as u32, 0, sample, c3], key);
        let u = (f64::from(w[0]) + 0.5) * INV;
        let v = (f64::from(w[1]) + 0.5) * INV;
        let r = INIT_RADIUS * u.sqrt();
        let (s, c) = (TAU * v).sin_cos();
        [r * c, r * s]
    })
}

/// The state of a mesh: positions `q` and velocities `q̇` of the [`NODES`] nodes (row-major,
/// `k = y·10 + x`, `[x, y]` components, length units of the grid spacing), its springs and which
/// nodes are fixed. Masses are 1, so momentum equals velocity.
#[derive(Clone, Debug)]
pub struct Mesh {
    /// Positions `q_k = (x, y)`, `NODES` of them.
    pub positions: Vec<[f64; 2]>,
    /// Velocities `q̇_k`, `NODES` of them; 0 for fixed nodes.
    pub velocities: Vec<[f64; 2]>,
    /// The springs, [`springs`].
    pub springs: Vec<Spring>,
    /// `true` for the nodes that never move: the top row, `y = 0`.
    pub fixed: Vec<bool>,
    /// Spring forces of the current step (scratch, `NODES`).
    force: Vec<[f64; 2]>,
}

impl Mesh {
    /// A mesh at rest with node `k` at its grid position `(x, y)` plus `displacements[k]`
    /// (the fixed row's displacements are ignored).
    pub fn new(displacements: &[[f64; 2]; NODES]) -> Mesh {
        let fixed: Vec<bool> = (0..NODES).map(|k| k < SIDE).collect();
        let positions = (0..NODES)
            .map(|k| {
                let grid = [(k % SIDE) as f64, (k / SIDE) as f64];
                if fixed[k] {
                    grid
                } else {
                    [grid[0] + displacements[k][0], grid[1] + displacements[k][1]]
                }
            })
            .collect();
        Mesh {
            positions,
            velocities: vec![[0.0; 2]; NODES],
            springs: springs(),
            fixed,
            force: vec![[0.0; 2]; NODES],
        }
    }

    /// The initial state of sample `sample` under `seed`: [`initial_displacements`], at rest.
    pub fn initial(seed: u64, sample: u32) -> Mesh {
        Mesh::new(&initial_displacements(seed, sample))
    }

    /// One semi-implicit Euler step of `dtau` with damping coefficient `damping`: every free
    /// node's velocity gains `dtau·F(q, q̇)` (forces from the positions and velocities before the
    /// step), then every free node moves by `dtau·q̇` with its new velocity. Fixed nodes never
    /// change.
    pub fn step(&mut self, dtau: f64, damping: f64) {
        self.force.iter_mut().for_each(|f| *f = [0.0; 2]);
        for s in &self.springs {
            let (qa, qb) = (self.positions[s.a], self.positions[s.b]);
            let d = [qa[0] - qb[0], qa[1] - qb[1]];
            let len = (d[0] * d[0] + d[1] * d[1]).sqrt();
            // (|d| − L)·d/|d|; a spring squeezed to zero length pushes nowhere.
            let k = if len > 0.0 { (len - s.rest) / len } else { 0.0 };
            let f = [k * d[0], k * d[1]];
            self.force[s.a][0] -= f[0];
            self.force[s.a][1] -= f[1];
            self.force[s.b][0] += f[0];
            self.force[s.b][1] += f[1];
        }
        for ((v, f), &fixed) in self.velocities.iter_mut().zip(&self.force).zip(&self.fixed) {
            if !fixed {
                v[0] += dtau * (f[0] - damping * v[0]);
                v[1] += dtau * (f[1] - damping * v[1]);
            }
        }
        for ((q, v), &fixed) in self
            .positions
            .iter_mut()
            .zip(&self.velocities)
            .zip(&self.fixed)
        {
            if !fixed {
                q[0] += dtau * v[0];
                q[1] += dtau * v[1];
            }
        }
    }

    /// Kinetic energy `½Σ|q̇|²` (unit masses).
    pub fn kinetic_energy(&self) -> f64 {
        0.5 * self
            .velocities
            .iter()
            .map(|v| v[0] * v[0] + v[1] * v[1])
            .sum::<f64>()
    }

    /// Spring potential energy `½Σ_springs (|d| − L)²`.
    pub fn potential_energy(&self) -> f64 {
        0.5 * self
            .springs
            .iter()
            .map(|s| {
                let (qa, qb) = (self.positions[s.a], self.positions[s.b]);
                let d = [qa[0] - qb[0], qa[1] - qb[1]];
                let e = (d[0] * d[0] + d[1] * d[1]).sqrt() - s.rest;
                e * e
            })
            .sum::<f64>()
    }

    /// Total energy, kinetic plus spring potential; conserved by the dynamics when the damping
    /// is 0.
    pub fn energy(&self) -> f64 {
        self.kinetic_energy() + self.potential_energy()
    }

    /// Whether every position and velocity is finite.
    pub fn is_finite(&self) -> bool {
        self.positions
            .iter()
            .chain(&self.velocities)
            .all(|p| p[0].is_finite() && p[1].is_finite())
    }

    /// The mesh's highest angular frequency `ω_max` at rest: the square root of the largest
    /// eigenvalue of the stiffness matrix of the free nodes (unit masses, springs of constant 1
    /// linearised about their rest lengths, `K = Σ_springs u uᵀ` on each pair of nodes, `u` the
    /// spring's direction), by power iteration. Semi-implicit Euler is stable only for
    /// `Δτ·ω_max < 2`; its energy error grows with `Δτ·ω_max`.
    pub fn highest_frequency() -> f64 {
        let rest = Mesh::new(&[[0.0; 2]; NODES]);
        let free: Vec<usize> = (0..NODES).filter(|&k| !rest.fixed[k]).collect();
        let mut slot = vec![usize::MAX; NODES];
        for (i, &k) in free.iter().enumerate() {
            slot[k] = i;
        }
        let n = 2 * free.len();
        let mut k = vec![0.0f64; n * n];
        for s in &rest.springs {
            let (qa, qb) = (rest.positions[s.a], rest.positions[s.b]);
            let u = [(qa[0] - qb[0]) / s.rest, (qa[1] - qb[1]) / s.rest];
            for (p, q, sign) in [
                (s.a, s.a, 1.0),
                (s.b, s.b, 1.0),
                (s.a, s.b, -1.0),
                (s.b, s.a, -1.0),
            ] {
                let (i, j) = (slot[p], slot[q]);
                if i == usize::MAX || j == usize::MAX {
                    continue;
                }
                for (di, ui) in u.iter().enumerate() {
                    for (dj, uj) in u.iter().enumerate() {
                        k[(2 * i + di) * n + 2 * j + dj] += sign * ui * uj;
                    }
                }
            }
        }
        // power iteration from a vector with a part along every eigenvector; the Rayleigh
        // quotient vᵀKv of the unit vector converges twice as fast as the norm ratio
        let mut v: Vec<f64> = (0..n).map(|i| 1.0 + (i % 7) as f64 * 0.1).collect();
        let mut lambda = 0.0;
        for _ in 0..5000 {
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            v.iter_mut().for_each(|x| *x /= norm);
            let w: Vec<f64> = (0..n)
                .map(|i| (0..n).map(|j| k[i * n + j] * v[j]).sum())
                .collect();
            lambda = v.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>();
            v = w;
        }
        lambda.sqrt()
    }

    /// Appends the snapshot `(4, 10, 10)` to `out` as float32: channels `p_x, p_y, q_x, q_y`
    /// (momentum = velocity, position), each a `10 × 10` grid with row `y` (row 0 the fixed top
    /// row) and column `x` of the node's place in the mesh.
    pub fn write_snapshot(&self, out: &mut Vec<f32>) {
        for (field, axis) in [
            (&self.velocities, 0),
            (&self.velocities, 1),
            (&self.positions, 0),
            (&self.positions, 1),
        ] {
            out.extend(field.iter().map(|v| v[axis] as f32));
        }
    }
}
