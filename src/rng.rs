//! Counter-based random numbers (docs/random.md): Philox4x32-10 (Salmon et al., SC'11; the
//! Random123 and cuRAND algorithm) and Box–Muller normals.
//!
//! Every noise value is a pure function of `(seed, purpose, sample n, member m, step, element e)`:
//! the 64-bit seed is the Philox key, and the counter is
//!
//! ```text
//! c0 = e / 4,   c1 = step,   c2 = n,   c3 = purpose · 2^24 + m
//! ```
//!
//! One Philox call gives four 32-bit words `w0 … w3`; element `e` takes the normal number
//! `e mod 4` of the two Box–Muller pairs `(w0, w1)`, `(w2, w3)`:
//! `u = (w_a + ½)/2^32`, `v = (w_b + ½)/2^32`, `r = √(−2 ln u)`, normals `r·cos 2πv`, `r·sin 2πv`
//! (computed in f64, rounded to f32). Nothing depends on how the work is split, so a forecast is
//! the same for any batch size, thread count or device.

/// Philox multipliers and Weyl key increments (Random123 `philox4x32`).
const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Philox4x32 with 10 rounds: the four output words for counter `ctr` under key `key`.
#[inline]
pub fn philox4x32_10(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (ctr, key);
    for round in 0..10 {
        if round > 0 {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
        let p0 = u64::from(M0) * u64::from(c[0]);
        let p1 = u64::from(M1) * u64::from(c[2]);
        c = [
            ((p1 >> 32) as u32) ^ c[1] ^ k[0],
            p1 as u32,
            ((p0 >> 32) as u32) ^ c[3] ^ k[1],
            p0 as u32,
        ];
    }
    c
}

/// Why a noise value is drawn; part of the counter, so different uses never share numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Purpose {
    /// The initial noise `ε` of sampling (docs/process.md, “Initial state”).
    InitNoise = 0,
    /// The fresh noise `z` of a DDIM step with `ddim_eta > 0`; `step` is the step index `k`.
    StepNoise = 1,
    /// The white noise behind a generated flow's initial vorticity (`dydiff data`).
    FlowInit = 2,
    /// A training step's draws of (sequence, window start, timestep) per batch row.
    TrainBatch = 3,
    /// A training step's noise `ε` per batch row.
    TrainNoise = 4,
    /// The fixed validation windows and timesteps.
    ValBatch = 5,
    /// The fixed validation noise.
    ValNoise = 6,
    /// The initial displacements of a generated spring mesh (`dydiff data spring-mesh`).
    MeshInit = 7,
    /// The dropout masks of a forecast's network calls (Monte-Carlo dropout; DYffusion's
    /// interpolator); `step` is the call's index in the member's forecast.
    Dropout = 8,
    /// The dropout masks of a training step; `step` is the optimizer step.
    TrainDropout = 9,
    /// The dropout masks of the validation batches; `step` is the validation batch.
    ValDropout = 10,
    /// The noise `ξ` of DYffusion's `data+noise` forecaster condition in a forecast; `step` is
    /// the call's index in the member's forecast.
    ConditionNoise = 11,
}

impl Purpose {
    /// The purpose with number `n` (its place in the counter), if there is one.
    pub fn from_u32(n: u32) -> Option<Purpose> {
        [
            Purpose::InitNoise,
            Purpose::StepNoise,
            Purpose::FlowInit,
            Purpose::TrainBatch,
            Purpose::TrainNoise,
            Purpose::ValBatch,
            Purpose::ValNoise,
            Purpose::MeshInit,
            Purpose::Dropout,
            Purpose::TrainDropout,
            Purpose::ValDropout,
            Purpose::ConditionNoise,
        ]
        .into_iter()
        .find(|p| *p as u32 == n)
    }
}

/// Where a stream of noise lives: seed, purpose and step (docs/random.md, “Counter layout”).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoiseKey {
    pub seed: u64,
    pub purpose: Purpose,
    pub step: u32,
}

/// One row of noise: a (sample, member) pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoiseRow {
    pub sample: u32,
    pub member: u32,
}

/// Largest member index the counter layout holds (24 bits).
pub const MAX_MEMBERS: u32 = 1 << 24;

/// The four uniform 32-bit words of block 0 of a row: for draws of integers.
pub fn words(key: NoiseKey, row: NoiseRow) -> [u32; 4] {
    let k = [key.seed as u32, (key.seed >> 32) as u32];
    let c3 = ((key.purpose as u32) << 24) | (row.member & (MAX_MEMBERS - 1));
    philox4x32_10([0, key.step, row.sample, c3], k)
}

/// An integer in `0 … n−1` from a uniform word (`⌊w·n / 2³²⌋`).
pub fn below(word: u32, n: usize) -> usize {
    ((u64::from(word) * n as u64) >> 32) as usize
}

/// Box–Muller: two standard normals from two uniform words.
#[inline]
fn box_muller(a: u32, b: u32) -> (f32, f32) {
    const INV: f64 = 1.0 / 4_294_967_296.0;
    let u = (f64::from(a) + 0.5) * INV;
    let v = (f64::from(b) + 0.5) * INV;
    let r = (-2.0 * u.ln()).sqrt();
    let (s, c) = (std::f64::consts::TAU * v).sin_cos();
    ((r * c) as f32, (r * s) as f32)
}

/// Fills `out` with the normals of elements `first … first + out.len() − 1` of one row.
pub fn fill_normals(key: NoiseKey, row: NoiseRow, first: usize, out: &mut [f32]) {
    let k = [key.seed as u32, (key.seed >> 32) as u32];
    let c3 = ((key.purpose as u32) << 24) | (row.member & (MAX_MEMBERS - 1));
    let mut e = first;
    let end = first + out.len();
    while e < end {
        let block = e / 4;
        let w = philox4x32_10([block as u32, key.step, row.sample, c3], k);
        let (z0, z1) = box_muller(w[0], w[1]);
        let (z2, z3) = box_muller(w[2], w[3]);
        let z = [z0, z1, z2, z3];
        let stop = end.min(block * 4 + 4);
        for (o, zi) in out[e - first..stop - first].iter_mut().zip(&z[e % 4..]) {
            *o = *zi;
        }
        e = stop;
    }
}

/// The most dropout layers of one network: the layer has the top 8 bits of the counter's element
/// word (docs/random.md, “Dropout masks”).
pub const MAX_DROPOUT_LAYERS: u32 = 1 << 8;

/// The most values one row of a dropout layer may hold: the element word keeps `e/4` in 24 bits.
pub const MAX_DROPOUT_ROW: usize = 1 << 26;

/// The smallest uniform word that keeps a value under dropout probability `p` (`0 ≤ p < 1`):
/// a value is kept when its word `w ≥ ⌊p·2³²⌉`, with probability `1 − p` to within `2⁻³²`.
pub fn dropout_threshold(p: f32) -> u32 {
    (f64::from(p) * 4_294_967_296.0)
        .round()
        .clamp(0.0, f64::from(u32::MAX)) as u32
}

/// The factor `1/(1 − p)` kept values are scaled by (inverted dropout, as PyTorch), rounded to
/// f32 from f64.
pub fn dropout_scale(p: f32) -> f32 {
    (1.0 / (1.0 - f64::from(p))) as f32
}

/// Where the dropout masks of one network call come from (docs/random.md, “Dropout masks”):
/// the seed, the purpose ([`Purpose::Dropout`], [`Purpose::TrainDropout`] or
/// [`Purpose::ValDropout`]) and the call word `step` (counter word `c1`).
///
/// Element `e` of layer `l` in row `(n, m)` takes word `e mod 4` of the Philox call with counter
/// `c0 = l·2²⁴ + ⌊e/4⌋`, `c1 = step`, `c2 = n`, `c3 = purpose·2²⁴ + m`, and is kept when that word
/// is at least [`dropout_threshold`].
pub fn fill_dropout_mask(key: NoiseKey, layer: u32, p: f32, row: NoiseRow, out: &mut [f32]) {
    let (threshold, scale) = (dropout_threshold(p), dropout_scale(p));
    fill_dropout_mask_from(key, layer, row, 0, threshold, scale, out);
}

/// [`fill_dropout_mask`] of elements `first …` (`first` a multiple of 4), with the threshold
/// and scale given.
pub fn fill_dropout_mask_from(
    key: NoiseKey,
    layer: u32,
    row: NoiseRow,
    first: usize,
    threshold: u32,
    scale: f32,
    out: &mut [f32],
) {
    let k = [key.seed as u32, (key.seed >> 32) as u32];
    let c3 = ((key.purpose as u32) << 24) | (row.member & (MAX_MEMBERS - 1));
    for (i, chunk) in out.chunks_mut(4).enumerate() {
        let c0 = (layer << 24) | (first / 4 + i) as u32;
        let w = philox4x32_10([c0, key.step, row.sample, c3], k);
        for (o, wi) in chunk.iter_mut().zip(w) {
            *o = if wi >= threshold { scale } else { 0.0 };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random123 `kat_vectors` for philox4x32_10 (docs/random.md, “Known answers”).
    #[test]
    fn philox_known_answers() {
        let cases: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
            (
                [0; 4],
                [0; 2],
                [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8],
            ),
            (
                [u32::MAX; 4],
                [u32::MAX; 2],
                [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd],
            ),
            (
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0],
                [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
            ),
        ];
        for (ctr, key, want) in cases {
            assert_eq!(philox4x32_10(ctr, key), want, "counter {ctr:08x?}");
        }
    }

    #[test]
    fn normals_do_not_depend_on_the_split() {
        let key = NoiseKey {
            seed: 0x1234_5678_9abc,
            purpose: Purpose::StepNoise,
            step: 7,
        };
        let row = NoiseRow {
            sample: 3,
            member: 2,
        };
        let mut whole = vec![0.0; 103];
        fill_normals(key, row, 0, &mut whole);
        for split in [1, 2, 3, 5, 50, 101] {
            let mut parts = vec![0.0; 103];
            let (a, b) = parts.split_at_mut(split);
            fill_normals(key, row, 0, a);
            fill_normals(key, row, split, b);
            assert_eq!(parts, whole, "split at {split}");
        }
    }

    #[test]
    fn normals_are_standard_and_streams_differ() {
        let key = NoiseKey {
            seed: 42,
            purpose: Purpose::InitNoise,
            step: 0,
        };
        let n = 400_000;
        let mut z = vec![0.0f32; n];
        fill_normals(
            key,
            NoiseRow {
                sample: 0,
                member: 0,
            },
            0,
            &mut z,
        );
        let mean = z.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
        let var = z
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n as f64;
        let kurt = z
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(4))
            .sum::<f64>()
            / n as f64
            / (var * var);
        // Standard errors: mean 1/√n = 0.0016, variance √(2/n) = 0.0022, kurtosis √(24/n) = 0.008.
        assert!(mean.abs() < 0.008, "mean {mean}");
        assert!((var - 1.0).abs() < 0.011, "variance {var}");
        assert!((kurt - 3.0).abs() < 0.04, "kurtosis {kurt}");
        // Lag-1 correlation inside a Philox block and across blocks.
        let lag = z.windows(2).map(|w| f64::from(w[0] * w[1])).sum::<f64>() / n as f64;
        assert!(lag.abs() < 0.008, "lag-1 correlation {lag}");
        let mut other = vec![0.0f32; 64];
        for (i, (key, row)) in [
            (
                NoiseKey { seed: 43, ..key },
                NoiseRow {
                    sample: 0,
                    member: 0,
                },
            ),
            (
                key,
                NoiseRow {
                    sample: 1,
                    member: 0,
                },
            ),
            (
                key,
                NoiseRow {
                    sample: 0,
                    member: 1,
                },
            ),
            (
                NoiseKey { step: 1, ..key },
                NoiseRow {
                    sample: 0,
                    member: 0,
                },
            ),
            (
                NoiseKey {
                    purpose: Purpose::StepNoise,
                    ..key
                },
                NoiseRow {
                    sample: 0,
                    member: 0,
                },
            ),
        ]
        .into_iter()
        .enumerate()
        {
            fill_normals(key, row, 0, &mut other);
            assert_ne!(other[..], z[..64], "stream {i} repeats the base stream");
        }
    }
}
