//! `dydiff eval` (docs/metrics.md): scores an ensemble forecast `(N, M, S, C, H, W)` against the
//! truth `(N, S, C, H, W)`, or `(N, L, C, H, W)` of which the frames that were forecast are
//! scored: those the forecast's window record names (`FORECAST.window.json`, written by `sample`:
//! the truth numbered like the sampler's input), or those `--truth-start` selects; overall and
//! per lead time; prints a table, and writes JSON and pictures on request.

use crate::error::{Error, Result};
use crate::io::outputs::Outputs;
use crate::io::{npy, picture};
use crate::metrics::{self, Dims, EvalSettings, Protocol, SampleScores};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Options of `dydiff eval`: its flags, declared here once (the doc comments are the `--help`).
#[derive(Clone, Debug, clap::Args)]
pub struct EvalOptions {
    /// Forecast (N, M, S, C, H, W), data space (as written by dydiff sample).
    #[arg(long)]
    pub forecast: PathBuf,
    /// Truth (N, S, C, H, W), or (N, L, C, H, W) numbered like the sampler's input, of which
    /// the frames that were forecast are scored: those FORECAST.window.json names (sample
    /// writes it beside the forecast), or those --truth-start selects.
    #[arg(long)]
    pub truth: PathBuf,
    /// The truth frame (0-based) that lead 1 of the forecast predicts, for a truth longer
    /// than the forecast: overrides the forecast's window record, and is needed without one.
    #[arg(long)]
    pub truth_start: Option<usize>,
    /// The evaluation protocol: dydiff's (every pixel, data units, docs/metrics.md), or that of
    /// Dynamical Diffusion's reference code for turbulence (data / 4, only truth ≥ 0 scored,
    /// samples with an unscored field left out, CSI at 0; docs/metrics.md, "The reference's
    /// turbulence protocol").
    #[arg(long, value_enum, default_value = "dydiff")]
    pub protocol: Protocol,
    /// Event thresholds of CSI and FSS, comma-separated finite numbers (default: the
    /// truth's 75th and 95th percentiles; with --protocol reference-turbulence, 0).
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    pub thresholds: Vec<f64>,
    /// Also write the report as JSON: {"overall": {...}, "per_lead": [{...}, ...]}, in an
    /// existing directory (the table is printed first, then this file and the --png pictures
    /// are written together).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Directory for crps.png and spread_skill.png (against lead time); an existing one keeps
    /// its other files, a new one needs an existing parent.
    #[arg(long)]
    pub png: Option<PathBuf>,
    /// Also each sample's overall scores in the JSON report ("per_sample"), for analyses of
    /// one's own (the CRPS averages over them to the overall one).
    #[arg(long)]
    pub per_sample: bool,
    /// A second forecast of the same truth (any number of members) to compare with: each
    /// overall score's change, (this − OTHER) / |OTHER|, with its 95% interval from a paired
    /// bootstrap over the samples; printed after the table, and in the JSON report ("compare").
    #[arg(long, value_name = "OTHER")]
    pub compare: Option<PathBuf>,
    /// Resamples of the bootstrap of --compare.
    #[arg(long, default_value_t = 10_000, value_name = "N", requires = "compare")]
    pub resamples: usize,
}

/// The `q`-quantile of `v` (linear interpolation between order statistics, as numpy's default).
fn quantile(v: &[f32], q: f64) -> f64 {
    let mut s: Vec<f32> = v.to_vec();
    s.sort_unstable_by(|a, b| a.total_cmp(b));
    let pos = q * (s.len() - 1) as f64;
    let (i, f) = (pos.floor() as usize, pos.fract());
    let next = s[(i + 1).min(s.len() - 1)];
    f64::from(s[i]) * (1.0 - f) + f64::from(next) * f
}

fn read_forecast(path: &Path) -> Result<(npy::Array, Dims)> {
    let a = npy::read(path)?;
    let Some(&[n, m, s, c, h, w]) = a.shape.get(..).filter(|s| s.len() == 6) else {
        return Err(Error::bad_file(
            path,
            format!(
                "expected a forecast of shape (N, M, S, C, H, W), found {:?}",
                a.shape
            ),
        ));
    };
    if [n, m, s, c, h, w].contains(&0) {
        return Err(Error::bad_file(
            path,
            format!("empty forecast of shape {:?}", a.shape),
        ));
    }
    npy::check_finite(path, &a)?;
    Ok((a, Dims { n, m, s, c, h, w }))
}

/// The first forecast frame in the numbering of the sampler's input, from the forecast's window
/// record (`None` when there is none); the record's lead and samples are checked against the
/// forecast.
fn recorded_start(forecast: &Path, d: &Dims) -> Result<Option<(usize, String)>> {
    let path = crate::pipelines::sample::window_record_path(forecast);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| Error::bad_file(&path, format!("not valid JSON: {e}")))?;
    let count = |key: &str| {
        v.get(key)
            .and_then(Value::as_u64)
            .and_then(|k| usize::try_from(k).ok())
            .ok_or_else(|| {
                Error::bad_file(
                    &path,
                    format!(
                        "{key} = {}: expected a count",
                        v.get(key).unwrap_or(&Value::Null)
                    ),
                )
            })
    };
    let (start, lead, samples) = (
        count("first_forecast_frame")?,
        count("lead")?,
        count("samples")?,
    );
    if (lead, samples) != (d.s, d.n) {
        return Err(Error::bad_file(
            &path,
            format!(
                "records {samples} samples × lead {lead}, but {} holds {} samples × {} frames: the record belongs to another forecast (delete it, or sample again)",
                forecast.display(),
                d.n,
                d.s
            ),
        ));
    }
    let input = v
        .get("input")
        .and_then(Value::as_str)
        .unwrap_or("the input");
    Ok(Some((
        start,
        format!(
            "{} (frames {start}…{} of {input})",
            path.display(),
            start + lead - 1
        ),
    )))
}

/// The truth frames that were forecast, `(N, S, C, H, W)`: all of a truth of `S` frames, or of a
/// longer one the `S` frames from `start` (`--truth-start`, else the forecast's window record);
/// a longer truth with neither is refused. Also the truth's number of frames.
fn read_truth(path: &Path, d: &Dims, start: Option<(usize, String)>) -> Result<(Vec<f32>, usize)> {
    let a = npy::read(path)?;
    let ok = matches!(*a.shape, [n, l, c, h, w] if n == d.n && l >= d.s && c == d.c && h == d.h && w == d.w);
    if !ok {
        return Err(Error::bad_file(
            path,
            format!(
                "expected the truth of shape (N, S, C, H, W) = ({}, {}, {}, {}, {}) or (N, L ≥ S, C, H, W) to match the forecast, found {:?}",
                d.n, d.s, d.c, d.h, d.w, a.shape
            ),
        ));
    }
    npy::check_finite(path, &a)?;
    let (l, frame) = (a.shape[1], d.c * d.h * d.w);
    let first = match start {
        _ if l == d.s => 0,
        None => {
            return Err(Error::bad_file(
                path,
                format!(
                    "{l} frames for a forecast of {} frames, and which of them were forecast is unknown (no window record beside the forecast): pass --truth-start K (the truth frame of lead 1, 0-based; K = history frames when the truth is the sampler's input) or a truth of {} frames",
                    d.s, d.s
                ),
            ))
        }
        Some((k, from)) if k + d.s > l => {
            return Err(Error::bad_file(
                path,
                format!(
                    "{l} frames, but the forecast's frames are {k}…{} of its input ({from}): expected at least {} frames numbered like the input, or --truth-start K with K + {} ≤ {l}",
                    k + d.s - 1,
                    k + d.s,
                    d.s
                ),
            ))
        }
        Some((k, _)) => k,
    };
    let y = (0..d.n)
        .flat_map(|i| {
            a.data[(i * l + first) * frame..][..d.s * frame]
                .iter()
                .copied()
        })
        .collect();
    Ok((y, l))
}

/// The largest value less the smallest.
fn value_range(y: &[f32]) -> f64 {
    let (lo, hi) = y
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    f64::from(hi) - f64::from(lo)
}

/// Channel `k` of an array whose frames hold `channels` planes of `plane` values.
fn channel(a: &[f32], k: usize, channels: usize, plane: usize) -> Vec<f32> {
    a.chunks(channels * plane)
        .flat_map(|frame| frame[k * plane..(k + 1) * plane].iter().copied())
        .collect()
}

fn num(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "—".to_string(), |x| format!("{x:.4}"))
}

/// That the forecast at `path` has the two members the reference protocol's fair CRPS needs.
fn two_members(path: &Path, d: &Dims) -> Result<()> {
    if d.m >= 2 {
        return Ok(());
    }
    Err(Error::bad_file(
        path,
        format!(
            "--protocol reference-turbulence: its fair CRPS needs at least 2 members, found {}",
            d.m
        ),
    ))
}

/// The seed of `--compare`'s bootstrap: fixed, so a comparison is reproducible.
const BOOTSTRAP_SEED: u64 = 0;

/// The comparison's lines: the main scores of both forecasts, the change and its interval.
fn compare_table(c: &Value, other: &Path) -> String {
    let mut out = format!(
        "compared with {} (paired bootstrap over {} samples, {} resamples): change = (this - other) / |other|\n{:>16} {:>10} {:>10} {:>9} {:>21}\n",
        other.display(),
        c["samples"],
        c["resamples"],
        "score",
        "this",
        "other",
        "change",
        "95% interval"
    );
    let scores = &c["scores"];
    let requested = c["resamples"].as_u64().unwrap_or(0);
    for (k, v) in scores.as_object().into_iter().flatten() {
        if !(TABLE_KEYS.contains(&k.as_str()) || k.starts_with("crps_pool")) {
            continue;
        }
        let mut ci = match v["ci95"].as_array() {
            Some(b) => format!("[{}, {}]", percent(&b[0]), percent(&b[1])),
            None => "—".into(),
        };
        let counted = v["resamples"].as_u64().unwrap_or(0);
        if counted < requested && v["ci95"].is_array() {
            ci += &format!(" ({counted} counted)");
        }
        out += &format!(
            "{k:>16} {:>10} {:>10} {:>9} {ci:>21}\n",
            num(&v["this"]),
            num(&v["other"]),
            percent(&v["change"])
        );
    }
    out
}

/// A relative change as a signed percentage, with decimals enough for two significant digits
/// (at most four): `+0.0004%`, `-1.5%`; `—` when undefined.
fn percent(v: &Value) -> String {
    match v.as_f64() {
        Some(x) => {
            let p = 100.0 * x;
            let decimals = match p.abs() {
                a if a >= 1.0 || a == 0.0 => 1,
                a if a >= 0.1 => 2,
                a if a >= 0.01 => 3,
                _ => 4,
            };
            format!("{p:+.decimals$}%")
        }
        None => "—".into(),
    }
}

/// The table's columns: the main scores of dydiff's protocol.
const TABLE_KEYS: [&str; 8] = [
    "crps",
    "crps_standard",
    "rmse",
    "mae",
    "spread",
    "ssr",
    "psnr",
    "ssim",
];

/// A table of the main metrics, overall and per lead time.
fn table(r: &Value) -> String {
    // under the reference's turbulence protocol, its CRPS scores
    let keys: &[&str] = if r["protocol"] == "reference-turbulence" {
        &metrics::turbulence::CRPS_KEYS
    } else {
        &TABLE_KEYS
    };
    let mut out = format!("{:>8}", "lead");
    let width = keys.iter().map(|k| k.len()).max().unwrap_or(0).max(13);
    for k in keys {
        out += &format!(" {k:>width$}");
    }
    out.push('\n');
    let mut row = |name: String, o: &Value| {
        out += &format!("{name:>8}");
        for k in keys {
            out += &format!(" {:>width$}", num(&o[*k]));
        }
        out.push('\n');
    };
    for o in r["per_lead"].as_array().into_iter().flatten() {
        row(o["lead"].to_string(), o);
    }
    row("all".into(), &r["overall"]);
    for c in r["per_channel"].as_array().into_iter().flatten() {
        let name = c["name"]
            .as_str()
            .map_or(c["channel"].to_string(), str::to_string);
        row(format!("ch {name}"), &c["overall"]);
    }
    let extra: Vec<String> = r["overall"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !keys.contains(&k.as_str()))
        .map(|(k, v)| format!("{k} {}", num(v)))
        .collect();
    out + &format!("overall: {}\n", extra.join(", "))
}

/// Runs `dydiff eval`: checks the locations of `--json` and `--png` before reading anything,
/// scores, prints the table and then writes the files together; returns the JSON report.
pub fn run(o: &EvalOptions) -> Result<Value> {
    let mut outputs = Outputs::new();
    let json_out = o
        .json
        .as_ref()
        .map(|p| outputs.file("--json", p))
        .transpose()?;
    let png_out = o
        .png
        .as_ref()
        .map(|d| outputs.dir("--png", d))
        .transpose()?;
    outputs.check_input("--forecast", &o.forecast)?;
    outputs.check_input("--truth", &o.truth)?;
    if let Some(other) = &o.compare {
        outputs.check_input("--compare", other)?;
    }
    if o.resamples == 0 {
        return Err(Error::Invalid(
            "--resamples: expected at least 1 resample, found 0".into(),
        ));
    }
    if let Some(q) = o.thresholds.iter().find(|q| !q.is_finite()) {
        return Err(Error::Invalid(format!(
            "--thresholds: expected finite numbers, found {q}"
        )));
    }
    let (x, d) = read_forecast(&o.forecast)?;
    let start = match o.truth_start {
        Some(k) => Some((k, format!("--truth-start {k}"))),
        None => recorded_start(&o.forecast, &d)?,
    };
    // the first forecast frame the forecast's own record names (without --truth-start)
    let recorded = start
        .as_ref()
        .filter(|_| o.truth_start.is_none())
        .map(|r| r.0);
    let (y, truth_frames) = read_truth(&o.truth, &d, start)?;
    let names = crate::data::channels::read(&o.truth, d.c)?;
    let reference = o.protocol == Protocol::ReferenceTurbulence;
    if reference {
        two_members(&o.forecast, &d)?;
    }
    if reference && png_out.is_some() {
        return Err(Error::Invalid(
            "--png: the reference-turbulence protocol has no spread or standard CRPS to plot; score with --protocol dydiff for pictures".into(),
        ));
    }
    let thresholds = if !o.thresholds.is_empty() {
        // −0 is the threshold 0 (one key, not `q0` and `q-0`)
        o.thresholds.iter().map(|&q| q + 0.0).collect()
    } else if reference {
        vec![0.0]
    } else {
        vec![quantile(&y, 0.75), quantile(&y, 0.95)]
    };
    let cfg = EvalSettings {
        thresholds,
        data_range: value_range(&y),
    };
    let score = |x: &[f32], d: &Dims| -> Box<dyn SampleScores> {
        if reference {
            Box::new(metrics::turbulence::score(x, &y, d, &cfg.thresholds))
        } else {
            Box::new(metrics::score(x, &y, d, &cfg))
        }
    };
    let scores = score(&x.data, &d);
    let mut report = scores.report();
    if o.per_sample {
        report["per_sample"] = Value::Array(scores.per_sample());
    }
    let mut compared = None;
    if let Some(other) = &o.compare {
        let (xo, dother) = read_forecast(other)?;
        if (dother.n, dother.s, dother.c, dother.h, dother.w) != (d.n, d.s, d.c, d.h, d.w) {
            return Err(Error::bad_file(
                other,
                format!(
                    "expected a forecast of the same truth as {}: shape (N, M, S, C, H, W) = ({}, M, {}, {}, {}, {}), found {:?}",
                    o.forecast.display(),
                    d.n,
                    d.s,
                    d.c,
                    d.h,
                    d.w,
                    xo.shape
                ),
            ));
        }
        if o.truth_start.is_none() && truth_frames > d.s {
            // which truth frames each forecast predicts: both records must say the same
            let theirs = recorded_start(other, &dother)?.map(|r| r.0);
            if theirs != recorded {
                let said = theirs.map_or("no window record".to_string(), |b| {
                    format!("a window record starting at truth frame {b}")
                });
                return Err(Error::bad_file(
                    other,
                    format!(
                        "has {said}, but {} starts at truth frame {}: which frames it forecasts is not those (pass --truth-start K to score both from frame K)",
                        o.forecast.display(),
                        recorded.map_or("?".to_string(), |a| a.to_string())
                    ),
                ));
            }
        }
        if reference {
            two_members(other, &dother)?;
        }
        let theirs = score(&xo.data, &dother);
        let c = metrics::compare(
            scores.as_ref(),
            theirs.as_ref(),
            o.resamples,
            BOOTSTRAP_SEED,
        );
        report["compare"] = serde_json::json!({
            "other": other.display().to_string(),
            "samples": d.n,
            "resamples": o.resamples,
            "seed": BOOTSTRAP_SEED,
            "scores": c,
        });
        compared = Some(other.clone());
    }
    if d.c > 1 && !reference {
        // channels of different units pool badly (a threshold of one is meaningless for the
        // other): each channel scored alone too, with its own default thresholds
        let per_channel: Vec<Value> = (0..d.c)
            .map(|k| {
                let (xk, yk) = (
                    channel(&x.data, k, d.c, d.h * d.w),
                    channel(&y, k, d.c, d.h * d.w),
                );
                let ck = EvalSettings {
                    thresholds: if o.thresholds.is_empty() {
                        vec![quantile(&yk, 0.75), quantile(&yk, 0.95)]
                    } else {
                        cfg.thresholds.clone()
                    },
                    data_range: value_range(&yk),
                };
                let mut r = metrics::evaluate(&xk, &yk, &Dims { c: 1, ..d }, &ck);
                r["channel"] = serde_json::json!(k);
                if let Some(names) = &names {
                    r["name"] = serde_json::json!(names[k].name);
                }
                r
            })
            .collect();
        report["per_channel"] = Value::Array(per_channel);
    }
    if let Some(out) = json_out {
        let text = serde_json::to_string_pretty(&report).expect("report serialises");
        outputs.write(out, text.as_bytes())?;
    }
    if let Some(dir) = png_out {
        let lead = |k: &str| -> Vec<f64> {
            report["per_lead"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|o| o[k].as_f64().unwrap_or(f64::NAN))
                .collect()
        };
        // (file, title, [(legend, colour, metric)]) of each plot against lead time.
        let plots = [
            (
                "crps.png",
                "CRPS",
                [
                    ("CRPS", [31, 119, 180], "crps"),
                    ("STANDARD", [255, 127, 14], "crps_standard"),
                ],
            ),
            (
                "spread_skill.png",
                "SPREAD AND RMSE",
                [
                    ("RMSE", [214, 39, 40], "rmse"),
                    ("SPREAD", [44, 160, 44], "spread"),
                ],
            ),
        ];
        for (file, title, lines) in plots {
            let values: Vec<Vec<f64>> = lines.iter().map(|(_, _, k)| lead(k)).collect();
            let series: Vec<picture::Series> = lines
                .iter()
                .zip(&values)
                .map(|(&(name, colour, _), values)| picture::Series {
                    name,
                    colour,
                    values,
                })
                .collect();
            outputs.write_in(dir, file, &picture::line_plot(title, &series)?)?;
        }
    }
    // Printed first: a table that cannot be printed leaves no file.
    let mut text = table(&report);
    if let Some(other) = compared {
        text += &compare_table(&report["compare"], &other);
    }
    crate::io::print_stdout(&text)?;
    outputs.commit()?;
    Ok(report)
}
