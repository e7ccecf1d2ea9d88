//! PNG pictures of forecasts: under a title line, for one sample, per channel, a grid with the
//! history (its frames labelled `-P … 0`), the truth (when known), the ensemble members (up to
//! [`MAX_MEMBERS_SHOWN`]), the ensemble mean and the ensemble spread (standard deviation over
//! members), each a row of frames, the forecast rows under their lead times `+1 … +S`. Fields
//! share one colour scale per channel, the observations' range (history and truth), so that a
//! diverging member cannot wash out the truth: member values beyond it are drawn in the scale's
//! end colours and the picture says CLIPPED; the spread has its own scale (inferno, from 0 to its
//! 99th percentile); both are drawn as colour bars with their end values. Channels carry the
//! names of the data's channel record (docs/data.md, “Channel names”), and a position channel on a
//! node grid is drawn as its displacement from the node's place at rest (`NAME - REST`).
//! [`line_plot`] draws scores against lead time (`dydiff eval --png`). Text uses a built-in 3×5
//! pixel font.

use crate::data::channels::Channel;
use crate::error::{Error, Result};

/// Members drawn per picture; the forecast file holds all of them.
pub const MAX_MEMBERS_SHOWN: usize = 8;

/// What one picture shows; every frame is `(C, H, W)`, data space.
pub struct Forecast<'a> {
    /// The `C` channels: names, and the rest position of node-grid positions.
    pub channels: &'a [Channel],
    pub height: usize,
    pub width: usize,
    /// `(P+1, C, H, W)`.
    pub history: &'a [f32],
    /// `(S, C, H, W)`, when the input held the future.
    pub truth: Option<&'a [f32]>,
    /// `(M, S, C, H, W)`.
    pub members: &'a [f32],
    pub n_members: usize,
    pub future: usize,
    /// The title line: which sample, model and sampler settings.
    pub title: &'a str,
}

/// Control points of matplotlib's viridis and inferno, evenly spaced.
const VIRIDIS: [[u8; 3]; 9] = [
    [68, 1, 84],
    [71, 44, 122],
    [59, 81, 139],
    [44, 113, 142],
    [33, 144, 141],
    [39, 173, 129],
    [92, 200, 99],
    [170, 220, 50],
    [253, 231, 37],
];
const INFERNO: [[u8; 3]; 9] = [
    [0, 0, 4],
    [31, 12, 72],
    [85, 15, 109],
    [136, 34, 106],
    [186, 54, 85],
    [227, 89, 51],
    [249, 140, 10],
    [249, 201, 50],
    [252, 255, 164],
];

/// The colour of `u ∈ [0, 1]` on a map (linear between control points).
fn colour(map: &[[u8; 3]; 9], u: f32) -> [u8; 3] {
    let u = if u.is_finite() {
        u.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = u * 8.0;
    let i = (x.floor() as usize).min(7);
    let f = x - i as f32;
    let mut c = [0u8; 3];
    for k in 0..3 {
        c[k] = (f32::from(map[i][k]) * (1.0 - f) + f32::from(map[i + 1][k]) * f).round() as u8;
    }
    c
}

/// A colour map stretched over `[lo, hi]`.
struct Scale {
    map: &'static [[u8; 3]; 9],
    lo: f32,
    hi: f32,
}

impl Scale {
    fn colour(&self, v: f32) -> [u8; 3] {
        let span = if self.hi > self.lo {
            self.hi - self.lo
        } else {
            1.0
        };
        colour(self.map, (v - self.lo) / span)
    }
}

/// 3×5 glyphs, one row per byte (bit 2 = left column).
fn glyph(ch: char) -> [u8; 5] {
    match ch {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        ':' => [0, 2, 0, 2, 0],
        ',' => [0, 0, 0, 2, 4],
        '=' => [0, 7, 0, 7, 0],
        '/' => [1, 1, 2, 4, 4],
        '_' => [0, 0, 0, 0, 7],
        '(' => [1, 2, 2, 2, 1],
        ')' => [4, 2, 2, 2, 4],
        'B' => [6, 5, 6, 5, 6],
        'F' => [7, 4, 6, 4, 4],
        'G' => [3, 4, 5, 5, 3],
        'J' => [1, 1, 1, 5, 2],
        'K' => [5, 5, 6, 5, 5],
        'O' => [2, 5, 5, 5, 2],
        'Q' => [2, 5, 5, 6, 3],
        'V' => [5, 5, 5, 5, 2],
        'W' => [5, 5, 7, 7, 5],
        'X' => [5, 5, 2, 5, 5],
        'Y' => [5, 5, 2, 2, 2],
        'Z' => [7, 1, 2, 4, 7],
        '-' => [0, 0, 7, 0, 0],
        '+' => [0, 2, 7, 2, 0],
        'A' => [2, 5, 7, 5, 5],
        'C' => [3, 4, 4, 4, 3],
        'D' => [6, 5, 5, 5, 6],
        'E' => [7, 4, 6, 4, 7],
        'H' => [5, 5, 7, 5, 5],
        'I' => [7, 2, 2, 2, 7],
        'L' => [4, 4, 4, 4, 7],
        'M' => [5, 7, 7, 5, 5],
        'N' => [6, 5, 5, 5, 5],
        'P' => [6, 5, 6, 4, 4],
        'R' => [6, 5, 6, 5, 5],
        'S' => [3, 4, 2, 1, 6],
        'T' => [7, 2, 2, 2, 2],
        'U' => [5, 5, 5, 5, 7],
        _ => [0; 5],
    }
}

/// Text scale: each font pixel is 2×2 image pixels; a character advances 8 pixels.
const PX: usize = 2;
const ADVANCE: usize = 4 * PX;
const TEXT_H: usize = 5 * PX;

/// An RGB image on a white background.
struct Canvas {
    w: usize,
    h: usize,
    rgb: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Canvas {
        Canvas {
            w,
            h,
            rgb: vec![255; w * h * 3],
        }
    }
    fn put(&mut self, x: usize, y: usize, c: [u8; 3]) {
        if x < self.w && y < self.h {
            self.rgb[(y * self.w + x) * 3..][..3].copy_from_slice(&c);
        }
    }
    fn text(&mut self, x: usize, y: usize, s: &str) {
        for (i, ch) in s.chars().enumerate() {
            let g = glyph(ch.to_ascii_uppercase());
            for (r, bits) in g.iter().enumerate() {
                for col in 0..3 {
                    if bits & (4 >> col) != 0 {
                        for dy in 0..PX {
                            for dx in 0..PX {
                                self.put(x + i * ADVANCE + col * PX + dx, y + r * PX + dy, [0; 3]);
                            }
                        }
                    }
                }
            }
        }
    }
    /// One `(H, W)` field at `(x, y)`, each value a `zoom × zoom` block.
    fn field(
        &mut self,
        x: usize,
        y: usize,
        f: &[f32],
        hw: (usize, usize),
        zoom: usize,
        sc: &Scale,
    ) {
        for i in 0..hw.0 * zoom {
            for j in 0..hw.1 * zoom {
                let v = f[(i / zoom) * hw.1 + j / zoom];
                self.put(x + j, y + i, sc.colour(v));
            }
        }
    }
    /// A line two pixels wide from `a` to `b`.
    fn line(&mut self, a: (usize, usize), b: (usize, usize), c: [u8; 3]) {
        let steps = a.0.abs_diff(b.0).max(a.1.abs_diff(b.1)).max(1);
        for t in 0..=steps {
            let f = t as f64 / steps as f64;
            let x = (a.0 as f64 + (b.0 as f64 - a.0 as f64) * f).round() as usize;
            let y = (a.1 as f64 + (b.1 as f64 - a.1 as f64) * f).round() as usize;
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                self.put(x + dx, y + dy, c);
            }
        }
    }
    /// A vertical colour bar with its top and bottom values.
    fn bar(&mut self, x: usize, y: usize, h: usize, sc: &Scale) {
        for i in 0..h {
            let c = colour(sc.map, 1.0 - i as f32 / (h.max(2) - 1) as f32);
            for j in 0..12 {
                self.put(x + j, y + i, c);
            }
        }
        self.text(x + 16, y, &label(sc.hi));
        self.text(x + 16, y + h.saturating_sub(TEXT_H), &label(sc.lo));
    }
}

/// The canvas as PNG bytes.
fn encode(cv: &Canvas) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, cv.w as u32, cv.h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc
            .write_header()
            .map_err(|e| Error::Invalid(format!("PNG encoding failed: {e}")))?;
        writer
            .write_image_data(&cv.rgb)
            .map_err(|e| Error::Invalid(format!("PNG encoding failed: {e}")))?;
    }
    Ok(bytes)
}

/// One line of a [`line_plot`]: a name, a colour and one value per lead time.
pub struct Series<'a> {
    pub name: &'a str,
    pub colour: [u8; 3],
    pub values: &'a [f64],
}

/// A line plot of values against lead time `1 … S`, with the y range and the lead times
/// labelled and a legend, as PNG bytes.
pub fn line_plot(title: &str, series: &[Series]) -> Result<Vec<u8>> {
    let (w, h) = (520usize, 340usize);
    let (left, right, top, bottom) = (80usize, 20usize, 40usize, 40usize);
    let mut cv = Canvas::new(w, h);
    cv.text(left, 12, title);
    let n = series.iter().map(|s| s.values.len()).max().unwrap_or(0);
    let finite = series
        .iter()
        .flat_map(|s| s.values.iter())
        .filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
        (a.min(v), b.max(v))
    });
    let (lo, hi) = if lo.is_finite() {
        let pad = ((hi - lo) * 0.05).max(hi.abs() * 1e-3).max(1e-12);
        (lo - pad, hi + pad)
    } else {
        (0.0, 1.0)
    };
    let (pw, ph) = (w - left - right, h - top - bottom);
    for x in left..=left + pw {
        cv.put(x, top + ph, [0; 3]);
    }
    for y in top..=top + ph {
        cv.put(left, y, [0; 3]);
    }
    cv.text(4, top, &label(hi as f32));
    cv.text(4, top + ph - TEXT_H, &label(lo as f32));
    let px = |i: usize| left + if n > 1 { i * pw / (n - 1) } else { pw / 2 };
    let py = |v: f64| {
        top + ((hi - v) / (hi - lo) * ph as f64)
            .round()
            .clamp(0.0, ph as f64) as usize
    };
    let every = n.div_ceil(12).max(1);
    for i in (0..n).step_by(every) {
        for y in top + ph..top + ph + 4 {
            cv.put(px(i), y, [0; 3]);
        }
        cv.text(px(i).saturating_sub(4), top + ph + 8, &(i + 1).to_string());
    }
    cv.text(left + pw / 2 - 2 * ADVANCE, h - TEXT_H - 4, "LEAD");
    for (k, s) in series.iter().enumerate() {
        let pts: Vec<(usize, usize)> = s
            .values
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(i, &v)| (px(i), py(v)))
            .collect();
        for pair in pts.windows(2) {
            cv.line(pair[0], pair[1], s.colour);
        }
        for &(x, y) in &pts {
            for dy in 0..5 {
                for dx in 0..5 {
                    cv.put(x + dx - 2, y + dy - 2, s.colour);
                }
            }
        }
        let ly = 12 + k * (TEXT_H + 4);
        let lx = w - right - 10 * ADVANCE;
        for dy in 0..TEXT_H {
            for dx in 0..12 {
                cv.put(lx + dx, ly + dy, s.colour);
            }
        }
        cv.text(lx + 16, ly, s.name);
    }
    encode(&cv)
}

/// A number with three significant digits, in the font's characters.
fn label(v: f32) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if (0.01..10_000.0).contains(&a) {
        let prec = (2 - a.log10().floor() as i32).max(0) as usize;
        format!("{v:.prec$}")
    } else {
        format!("{v:.2e}").to_uppercase()
    }
}

/// The `a` and `b` quantiles of `v` (nearest rank; `(+∞, −∞)` when empty).
fn percentiles(v: &[f32], a: f64, b: f64) -> (f32, f32) {
    if v.is_empty() {
        return (f32::INFINITY, f32::NEG_INFINITY);
    }
    let mut s = v.to_vec();
    s.sort_unstable_by(|x, y| x.total_cmp(y));
    let at = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
    (at(a), at(b))
}

fn min_max(parts: &[&[f32]]) -> (f32, f32) {
    parts
        .iter()
        .flat_map(|p| p.iter())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// Renders the picture as PNG bytes.
pub fn render(p: &Forecast) -> Result<Vec<u8>> {
    let (c, h, w, s, m) = (p.channels.len(), p.height, p.width, p.future, p.n_members);
    let hw = h * w;
    let e = c * hw;
    let p1 = p.history.len() / e;
    let shown = m.min(MAX_MEMBERS_SHOWN);
    let zoom = 48usize.div_ceil(h.max(w)).max(1);
    let (cw, ch) = (w * zoom, h * zoom);
    let gap = 3;
    let cols = p1.max(s);
    let names: Vec<String> = p
        .channels
        .iter()
        .map(|k| match k.rest {
            Some(_) => format!("{} - REST", k.name),
            None => k.name.clone(),
        })
        .collect();
    let longest = names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
    let label_w = 7.max(longest + 1) * ADVANCE + 6;
    let rows = 1 + usize::from(p.truth.is_some()) + shown + 2;
    let row_h = ch.max(TEXT_H) + gap;
    // per channel: its name and the history's frame labels, the rows, the lead labels between
    let block_h = 2 * (TEXT_H + 6) + rows * row_h + 8;
    let bar_w = 16 + 9 * ADVANCE;
    let width =
        (label_w + cols * (cw + gap) + 8 + bar_w).max(p.title.chars().count() * ADVANCE + 8);
    let title_h = TEXT_H + 8;
    let height = title_h + c * block_h + 4;
    let mut cv = Canvas::new(width, height);
    cv.text(4, 4, p.title);
    // Mean and spread over members, per (frame, channel, pixel), ddof 0.
    let mut mean = vec![0.0f32; s * e];
    let mut spread = vec![0.0f32; s * e];
    for i in 0..s * e {
        let mu = (0..m)
            .map(|k| f64::from(p.members[k * s * e + i]))
            .sum::<f64>()
            / m as f64;
        let var = (0..m)
            .map(|k| (f64::from(p.members[k * s * e + i]) - mu).powi(2))
            .sum::<f64>()
            / m as f64;
        mean[i] = mu as f32;
        spread[i] = var.sqrt() as f32;
    }
    // A frame of a field (history, truth, member, mean): a position channel less its rest place.
    let frame = |d: &[f32], f: usize, ch: usize| -> Vec<f32> {
        let k = &p.channels[ch];
        d[f * e + ch * hw..][..hw]
            .iter()
            .enumerate()
            .map(|(i, &v)| v - k.rest_value(i / w, i % w))
            .collect()
    };
    let spread_frame =
        |f: usize, ch: usize| -> Vec<f32> { spread[f * e + ch * hw..][..hw].to_vec() };
    for (chn, name) in names.iter().enumerate() {
        let y0 = title_h + chn * block_h + 4;
        cv.text(4, y0, name);
        // The history's frames, oldest to newest: -P … 0.
        for k in 0..p1 {
            cv.text(
                label_w + k * (cw + gap),
                y0,
                &format!("{}", k as i64 - (p1 as i64 - 1)),
            );
        }
        // The field scale of this channel: the range of the observations (history and truth);
        // member values beyond it show in its end colours, and the picture says CLIPPED.
        let mut observed: Vec<Vec<f32>> = (0..p1).map(|f| frame(p.history, f, chn)).collect();
        if let Some(t) = p.truth {
            observed.extend((0..s).map(|f| frame(t, f, chn)));
        }
        let refs: Vec<&[f32]> = observed.iter().map(|v| v.as_slice()).collect();
        let (lo, hi) = min_max(&refs);
        let members: Vec<f32> = (0..m * s).flat_map(|f| frame(p.members, f, chn)).collect();
        let clipped = members.iter().any(|&v| v < lo || v > hi);
        let spread_parts: Vec<Vec<f32>> = (0..s).map(|f| spread_frame(f, chn)).collect();
        let all_spread: Vec<f32> = spread_parts.concat();
        let (_, smax) = percentiles(&all_spread, 0.0, 0.99);
        let fields = Scale {
            map: &VIRIDIS,
            lo,
            hi,
        };
        let spreads = Scale {
            map: &INFERNO,
            lo: 0.0,
            hi: smax,
        };
        let mut y = y0 + TEXT_H + 6;
        let row =
            |cv: &mut Canvas, name: &str, frames: Vec<Vec<f32>>, sc: &Scale, y: &mut usize| {
                cv.text(4, *y + ch.saturating_sub(TEXT_H) / 2, name);
                for (k, f) in frames.iter().enumerate() {
                    cv.field(label_w + k * (cw + gap), *y, f, (h, w), zoom, sc);
                }
                *y += row_h;
            };
        row(
            &mut cv,
            "HIST",
            (0..p1).map(|f| frame(p.history, f, chn)).collect(),
            &fields,
            &mut y,
        );
        // Lead times over the forecast columns.
        for k in 0..s {
            cv.text(label_w + k * (cw + gap), y, &format!("+{}", k + 1));
        }
        y += TEXT_H + 6;
        if let Some(t) = p.truth {
            row(
                &mut cv,
                "TRUTH",
                (0..s).map(|f| frame(t, f, chn)).collect(),
                &fields,
                &mut y,
            );
        }
        for k in 0..shown {
            let frames = (0..s).map(|f| frame(p.members, k * s + f, chn)).collect();
            row(&mut cv, &format!("M{}", k + 1), frames, &fields, &mut y);
        }
        row(
            &mut cv,
            "MEAN",
            (0..s).map(|f| frame(&mean, f, chn)).collect(),
            &fields,
            &mut y,
        );
        let spread_y = y;
        row(&mut cv, "SPREAD", spread_parts, &spreads, &mut y);
        let bx = label_w + cols * (cw + gap) + 8;
        let field_top = y0 + TEXT_H + 6;
        cv.bar(bx, field_top, spread_y - gap - field_top, &fields);
        cv.bar(bx, spread_y, ch, &spreads);
        if clipped {
            cv.text(bx, y0, "CLIPPED");
        }
    }
    encode(&cv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::channels::Rest;

    /// A position channel with a rest place is drawn as the displacement: the same picture as
    /// the displacement given directly under the same label.
    #[test]
    fn positions_are_drawn_as_displacements() {
        let (h, w, p1, s, m) = (4, 5, 2, 2, 3);
        let hw = h * w;
        let wave = |n: usize, k: usize| -> Vec<f32> {
            (0..n * hw)
                .map(|i| ((i * 7 + k) % 11) as f32 * 0.03125 - 0.15625)
                .collect()
        };
        let (hist, truth, members) = (wave(p1, 1), wave(s, 2), wave(m * s, 3));
        // positions = the node's column + the displacement (exact in float32)
        let plus_column = |d: &[f32]| -> Vec<f32> {
            d.iter()
                .enumerate()
                .map(|(i, &v)| v + (i % hw % w) as f32)
                .collect()
        };
        let picture = |chan: Channel, hist: &[f32], truth: &[f32], members: &[f32]| {
            render(&Forecast {
                channels: &[chan],
                height: h,
                width: w,
                history: hist,
                truth: Some(truth),
                members,
                n_members: m,
                future: s,
                title: "T",
            })
            .unwrap()
        };
        let positions = picture(
            Channel {
                name: "Q_X".into(),
                rest: Some(Rest::Column),
            },
            &plus_column(&hist),
            &plus_column(&truth),
            &plus_column(&members),
        );
        let displacement = picture(
            Channel {
                name: "Q_X - REST".into(),
                rest: None,
            },
            &hist,
            &truth,
            &members,
        );
        assert!(positions == displacement);
        let raw = picture(
            Channel {
                name: "Q_X - REST".into(),
                rest: None,
            },
            &plus_column(&hist),
            &plus_column(&truth),
            &plus_column(&members),
        );
        assert!(raw != displacement);
    }

    #[test]
    fn labels_use_three_significant_digits() {
        assert_eq!(label(0.0), "0");
        assert_eq!(label(1.23456), "1.23");
        assert_eq!(label(-42.42), "-42.4");
        assert_eq!(label(123.4), "123");
        assert_eq!(label(0.0123), "0.0123");
        assert_eq!(label(1.5e-4), "1.50E-4");
        for ch in "0123456789.-E".chars() {
            assert_ne!(glyph(ch), [0; 5], "{ch} has a glyph");
        }
    }

    #[test]
    fn colour_maps_end_at_their_control_points() {
        assert_eq!(colour(&VIRIDIS, 0.0), VIRIDIS[0]);
        assert_eq!(colour(&VIRIDIS, 1.0), VIRIDIS[8]);
        assert_eq!(colour(&INFERNO, 2.0), INFERNO[8]);
        assert_eq!(colour(&INFERNO, f32::NAN), INFERNO[0]);
    }
}
