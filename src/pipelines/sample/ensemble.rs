//! What both samplers share: the `N × M` (sample, member) pairs taken in network batches of
//! `--batch` pairs (with several ranks, each its share of the batches: docs/distributed.md), the
//! roll-out over windows of `S` frames (docs/process.md, “Forecasting beyond one window”), the
//! times, and the progress bar.

use crate::distributed::world;
use crate::error::{Error, Result};
use crate::model::DataSpace;
use crate::rng::{NoiseRow, MAX_MEMBERS};

/// Time spent, for the benchmark report.
#[derive(Clone, Copy, Debug, Default)]
pub struct SampleTimes {
    /// Seconds in network evaluations (on a GPU, in the steps: network and DDIM update run as
    /// one graph, asynchronously, so this is the time spent launching them and waiting for the
    /// device).
    pub network: f64,
    /// Seconds in everything else of the sampling loop (noise, dynamics, DDIM updates, copies).
    pub other: f64,
}

/// The most windows of a roll-out: the window index has the top 8 bits of the noise counter's
/// step word (docs/random.md, “Streams”).
pub const MAX_WINDOWS: usize = 1 << 8;

/// The windows of `S = fut` frames that a roll-out over `lead` frames takes; `--lead` must give
/// 1 to [`MAX_WINDOWS`] of them.
pub(crate) fn check_lead(lead: usize, fut: usize) -> Result<usize> {
    let windows = lead.div_ceil(fut);
    if lead == 0 || windows > MAX_WINDOWS {
        return Err(Error::Invalid(format!(
            "--lead: expected 1 to {} frames ({MAX_WINDOWS} windows of {fut}), found {lead}",
            MAX_WINDOWS * fut
        )));
    }
    Ok(windows)
}

/// Rolls a method's window forecasts out over `lead` frames (docs/process.md, “Forecasting
/// beyond one window”) for `members` members of each of the `n` histories `obs`
/// `(n, P+1, C·H·W)`: `window(histories, w)` forecasts `S` frames for every (sample, member)
/// pair, `(n·M, S, C·H·W)`, from the first window's `obs` (per sample) or, later, the last
/// `P+1` frames of each pair's trajectory (per pair). `frames` is `(P+1, S, C·H·W)`. Returns
/// `(n, M, lead, C·H·W)`.
pub(crate) fn roll_out(
    (hist, fut, e): (usize, usize, usize),
    members: usize,
    obs: &[f32],
    n: usize,
    lead: usize,
    mut window: impl FnMut(&[f32], Window) -> Result<(Vec<f32>, SampleTimes)>,
) -> Result<(Vec<f32>, SampleTimes)> {
    let windows = check_lead(lead, fut)?;
    let pairs = n * members;
    let mut times = SampleTimes::default();
    // each pair's trajectory so far: its history, then its forecasts (data space)
    let per = (hist + windows * fut) * e;
    let mut traj = vec![0.0f32; pairs * per];
    for (i, t) in traj.chunks_mut(per).enumerate() {
        let sample = i / members;
        t[..hist * e].copy_from_slice(&obs[sample * hist * e..][..hist * e]);
    }
    for w in 0..windows {
        let histories: std::borrow::Cow<[f32]> = if w == 0 {
            obs.into()
        } else {
            traj.chunks(per)
                .flat_map(|t| t[w * fut * e..][..hist * e].iter().copied())
                .collect::<Vec<f32>>()
                .into()
        };
        let win = Window {
            index: w as u32,
            per_pair: w > 0,
        };
        let (fc, t) = window(&histories, win)?;
        times.network += t.network;
        times.other += t.other;
        for (traj, f) in traj.chunks_mut(per).zip(fc.chunks(fut * e)) {
            traj[(hist + w * fut) * e..][..fut * e].copy_from_slice(f);
        }
    }
    let out = traj
        .chunks(per)
        .flat_map(|t| t[hist * e..][..lead * e].iter().copied())
        .collect();
    Ok((out, times))
}

/// Which window of a roll-out [`forecast_from`] samples: its index (in the noise counter) and
/// whether the histories are given per (sample, member) pair rather than per sample.
#[derive(Clone, Copy)]
pub(crate) struct Window {
    pub index: u32,
    pub per_pair: bool,
}

/// Refuses more sequences than the noise counter's 32-bit sample index tells apart.
pub(super) fn check_sample_count(n: usize) -> Result<()> {
    if n as u64 > 1 << 32 {
        return Err(Error::Invalid(format!(
            "{n} sequences: expected at most 2^32 = 4294967296 per run (the noise of each is keyed by a 32-bit sample index); split the observations"
        )));
    }
    Ok(())
}

/// The progress bar of rank 0 over its share of `pairs` pairs taken in batches of `batch`, each
/// pair `units` (pair, step) units of which a network call does `per_call`; hidden on the other
/// ranks (docs/distributed.md).
pub(super) fn rank_progress(
    pairs: usize,
    batch: usize,
    units: usize,
    per_call: usize,
    enabled: bool,
) -> indicatif::ProgressBar {
    let w = world();
    let mine = w.batch_shares(pairs, batch)[w.rank()].len();
    progress_bar(mine * units, per_call, enabled && w.is_root())
}

/// A progress bar over (pair, step) units with ETA and forecasts per second, on stderr; hidden
/// when stderr is not a terminal.
pub(super) fn progress_bar(total: usize, steps: usize, enabled: bool) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    let style = indicatif::ProgressStyle::with_template(
        "sampling {bar:30} {percent:>3}%  {msg}  elapsed {elapsed_precise}, ETA {eta_precise}",
    )
    .expect("valid template")
    .with_key(
        "msg",
        move |st: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let per_s = st.per_sec() / steps as f64;
            let _ = write!(w, "{:.2} forecasts/s", per_s);
        },
    );
    bar.set_style(style);
    bar
}

/// Refuses `--members` outside 1 to [`MAX_MEMBERS`] (the noise counter's member index).
pub(super) fn check_members(members: usize) -> Result<()> {
    if members == 0 || members > MAX_MEMBERS as usize {
        return Err(Error::Invalid(format!(
            "--members: expected 1 to {MAX_MEMBERS}, found {members}"
        )));
    }
    Ok(())
}

/// Refuses `--batch 0`.
pub(super) fn check_batch(batch: usize) -> Result<()> {
    if batch == 0 {
        return Err(Error::Invalid(
            "--batch: expected at least 1, found 0".into(),
        ));
    }
    Ok(())
}

/// The (sample, member) pairs `first … first + b − 1` of an ensemble of `members` members per
/// sample, pair `i` being member `i mod M` of sample `i / M`.
pub(super) fn pair_rows(first: usize, b: usize, members: usize) -> Vec<NoiseRow> {
    (first..first + b)
        .map(|i| NoiseRow {
            sample: (i / members) as u32,
            member: (i % members) as u32,
        })
        .collect()
}

/// The histories of the pairs `rows` (pair `first` onwards) in model space (`space`): `(b, P+1, C·H·W)` from `obs`, which holds one history of
/// `frames` values per sample, or in a roll-out's later windows one per pair.
pub(super) fn model_space_histories(
    obs: &[f32],
    window: Window,
    first: usize,
    rows: &[NoiseRow],
    frames: usize,
    space: DataSpace,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows.len() * frames);
    for (i, r) in (first..).zip(rows) {
        let row = if window.per_pair {
            i
        } else {
            r.sample as usize
        };
        let src = &obs[row * frames..][..frames];
        out.extend(src.iter().map(|&v| space.to_model(v)));
    }
    out
}
