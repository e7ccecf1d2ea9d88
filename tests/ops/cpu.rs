//! Every fast CPU kernel against its plain reference (f64 accumulation). Tolerances (f32):
//! products and convolutions `1e-4 + 1e-4·|ref|` scaled by the reduction length, norms and
//! attention `1e-5 + 1e-4·|ref|`, data movement exact.

use crate::common::{assert_close, rand_tensor, rand_vec};
use dydiff::backend::cpu::{elementwise, reference};
use dydiff::backend::{ConvGeom, MatmulGeom, NormGeom, PadMode};
use dydiff::{Device, Tensor};

fn conv_case(g: ConvGeom) {
    let ConvGeom {
        n,
        ci,
        h,
        w,
        co,
        k,
        stride,
        pad,
        pad_mode,
    } = g;
    let x = rand_tensor(&[n, ci, h, w], 1);
    let wt = rand_tensor(&[co, ci, k, k], 2);
    let b = rand_tensor(&[co], 3);
    let y = x.conv2d(&wt, Some(&b), stride, pad, pad_mode).unwrap();
    let g = ConvGeom {
        n,
        ci,
        h,
        w,
        co,
        k,
        stride,
        pad,
        pad_mode,
    };
    assert_eq!(y.shape(), [n, co, g.ho(), g.wo()]);
    let want = reference::conv2d(
        &x.to_vec().unwrap(),
        &wt.to_vec().unwrap(),
        Some(&b.to_vec().unwrap()),
        &g,
    );
    let tol = 1e-6 * (ci * k * k) as f32;
    assert_close(
        &y.to_vec().unwrap(),
        &want,
        tol,
        1e-4,
        &format!("conv {g:?}"),
    );
    conv_backward_case(&g, &x.to_vec().unwrap(), &wt.to_vec().unwrap());
}

/// The backward pass for the same geometry against [`reference::conv2d_backward`]: `dx`
/// reduces over `co·k²` products, `dw` and `db` over `n·ho·wo`; tolerance
/// `1e-6·reduction + 1e-4·|ref|` for each.
fn conv_backward_case(g: &ConvGeom, x: &[f32], w: &[f32]) {
    let dy = rand_vec(g.n * g.co * g.ho() * g.wo(), 4);
    let store = |v: &[f32]| Device::Cpu.storage_from_vec(v.to_vec()).unwrap();
    let (want_dx, want_dw, want_db) = reference::conv2d_backward(x, w, &dy, g);
    for need_dx in [true, false] {
        let (dx, dw, db) = store(x)
            .conv2d_backward(&store(w), &store(&dy), g, need_dx)
            .unwrap();
        assert_eq!(dx.is_some(), need_dx, "conv backward {g:?}: dx");
        let pixels = (g.n * g.ho() * g.wo()) as f32;
        if let Some(dx) = dx {
            let tol = 1e-6 * (g.co * g.k * g.k) as f32;
            let what = format!("conv backward dx {g:?}");
            assert_close(&dx.to_vec().unwrap(), &want_dx, tol, 1e-4, &what);
        }
        let what = format!("conv backward dw {g:?}");
        assert_close(&dw.to_vec().unwrap(), &want_dw, 1e-6 * pixels, 1e-4, &what);
        let what = format!("conv backward db {g:?}");
        assert_close(&db.to_vec().unwrap(), &want_db, 1e-6 * pixels, 1e-4, &what);
    }
}

/// (n, ci, h, w, co, k, stride, pad)
type ConvCase = (usize, usize, usize, usize, usize, usize, usize, [usize; 4]);

#[test]
fn conv2d_matches_reference() {
    let cases: [ConvCase; 14] = [
        (2, 3, 7, 9, 5, 3, 1, [1; 4]),
        (1, 16, 16, 16, 8, 3, 1, [1; 4]),
        (3, 4, 8, 6, 6, 3, 2, [1; 4]),
        (2, 4, 8, 8, 4, 3, 2, [0, 1, 0, 1]),
        (2, 5, 6, 7, 3, 1, 1, [0; 4]),
        (1, 2, 5, 5, 3, 3, 1, [0; 4]),
        (4, 64, 32, 32, 64, 3, 1, [1; 4]),
        (2, 40, 9, 33, 24, 3, 2, [1; 4]),
        // Winograd edge cases: images smaller than a tile, sides not multiples of the tile
        (1, 3, 1, 1, 2, 3, 1, [1; 4]),
        (2, 5, 2, 3, 4, 3, 1, [1; 4]),
        (1, 4, 3, 17, 5, 3, 1, [1; 4]),
        (3, 7, 10, 4, 3, 3, 1, [1; 4]),
        // Winograd over more than 512 tiles (blocks of tiles rather than all at once), with
        // partial channel vectors on both sides
        (2, 20, 50, 47, 36, 3, 1, [1; 4]),
        (1, 33, 70, 64, 17, 3, 1, [1; 4]),
    ];
    for (n, ci, h, w, co, k, stride, pad) in cases {
        for pad_mode in [PadMode::Zeros, PadMode::Circular] {
            // circular padding at most the image's size (the 1×1 image's case included)
            if pad_mode == PadMode::Circular && (pad[0].max(pad[1]) > h || pad[2].max(pad[3]) > w) {
                continue;
            }
            conv_case(ConvGeom {
                n,
                ci,
                h,
                w,
                co,
                k,
                stride,
                pad,
                pad_mode,
            });
        }
    }
}

/// Circular padding is zero padding of the image with its opposite edges copied around it
/// (`numpy.pad(mode="wrap")`, PyTorch's `padding_mode="circular"`): the reference with circular
/// padding against the reference without padding on such a copy, built here by index arithmetic
/// of its own.
#[test]
fn circular_padding_is_the_wrapped_image() {
    for (h, w, k, stride, p) in [
        (5, 4, 3, 1, 1),
        (6, 6, 3, 2, 1),
        (3, 2, 5, 1, 2),
        (1, 1, 3, 1, 1),
    ] {
        let (n, ci, co) = (2, 3, 4);
        let x = rand_vec(n * ci * h * w, 7);
        let wt = rand_vec(co * ci * k * k, 8);
        let (hp, wp) = (h + 2 * p, w + 2 * p);
        let mut xp = vec![0.0; n * ci * hp * wp];
        for (plane, padded) in x.chunks(h * w).zip(xp.chunks_mut(hp * wp)) {
            for y in 0..hp {
                for xx in 0..wp {
                    let (sy, sx) = ((y + h * p - p) % h, (xx + w * p - p) % w);
                    padded[y * wp + xx] = plane[sy * w + sx];
                }
            }
        }
        let g = |h, w, pad, pad_mode| ConvGeom {
            n,
            ci,
            h,
            w,
            co,
            k,
            stride,
            pad,
            pad_mode,
        };
        let got = reference::conv2d(&x, &wt, None, &g(h, w, [p; 4], PadMode::Circular));
        let want = reference::conv2d(&xp, &wt, None, &g(hp, wp, [0; 4], PadMode::Zeros));
        assert_close(
            &got,
            &want,
            1e-6,
            1e-6,
            &format!("{h}×{w} k {k} s {stride} p {p}"),
        );
    }
}

#[test]
fn matmul_matches_reference_with_transposes() {
    for (a_trans, b_trans) in [(false, false), (true, false), (false, true), (true, true)] {
        let g = MatmulGeom {
            batch: 3,
            m: 37,
            n: 29,
            k: 51,
            a_trans,
            b_trans,
        };
        let a = rand_vec(3 * 37 * 51, 4);
        let b = rand_vec(3 * 51 * 29, 5);
        let sa = Device::Cpu.storage_from_vec(a.clone()).unwrap();
        let sb = Device::Cpu.storage_from_vec(b.clone()).unwrap();
        let got = sa.matmul(&sb, &g).unwrap().to_vec().unwrap();
        assert_close(
            &got,
            &reference::matmul(&a, &b, &g),
            1e-5 * 51.0,
            1e-4,
            &format!("{g:?}"),
        );
    }
}

#[test]
fn linear_matches_reference() {
    let x = rand_tensor(&[2, 70, 33], 6);
    let w = rand_tensor(&[17, 33], 7);
    let b = rand_tensor(&[17], 8);
    let y = x.linear(&w, Some(&b)).unwrap();
    assert_eq!(y.shape(), [2, 70, 17]);
    let g = MatmulGeom {
        batch: 1,
        m: 140,
        n: 17,
        k: 33,
        a_trans: false,
        b_trans: true,
    };
    let mut want = reference::matmul(&x.to_vec().unwrap(), &w.to_vec().unwrap(), &g);
    let bv = b.to_vec().unwrap();
    want.iter_mut()
        .enumerate()
        .for_each(|(i, v)| *v += bv[i % 17]);
    assert_close(&y.to_vec().unwrap(), &want, 1e-4, 1e-4, "linear");
}

#[test]
fn group_norm_matches_reference() {
    for (n, c, h, w, groups) in [(2, 8, 5, 7, 4), (3, 32, 4, 4, 32), (1, 64, 16, 16, 8)] {
        let x = rand_tensor(&[n, c, h, w], 9).scale(3.0).unwrap();
        let gamma = rand_tensor(&[c], 10);
        let beta = rand_tensor(&[c], 11);
        for silu in [false, true] {
            let y = if silu {
                x.group_norm_silu(groups, &gamma, &beta, 1e-5)
            } else {
                x.group_norm(groups, &gamma, &beta, 1e-5)
            };
            let g = NormGeom {
                n,
                c,
                hw: h * w,
                groups,
                eps: 1e-5,
                silu,
            };
            let (xv, gv, bv) = (
                x.to_vec().unwrap(),
                gamma.to_vec().unwrap(),
                beta.to_vec().unwrap(),
            );
            let want = reference::group_norm(&xv, &gv, &bv, &g);
            assert_close(
                &y.unwrap().to_vec().unwrap(),
                &want,
                1e-5,
                1e-4,
                "group_norm",
            );
        }
    }
}

#[test]
fn attention_matches_reference() {
    for (n, l, heads, d) in [(2, 17, 3, 8), (1, 300, 2, 32), (2, 64, 1, 16)] {
        let shape = [n, l, heads * d];
        let (q, k, v) = (
            rand_tensor(&shape, 12).scale(2.0).unwrap(),
            rand_tensor(&shape, 13),
            rand_tensor(&shape, 14),
        );
        let y = Tensor::attention(&q, &k, &v, heads).unwrap();
        let g = dydiff::backend::AttnGeom {
            n,
            l,
            heads,
            d,
            scale: 1.0 / (d as f32).sqrt(),
        };
        let want = reference::attention(
            &q.to_vec().unwrap(),
            &k.to_vec().unwrap(),
            &v.to_vec().unwrap(),
            &g,
        );
        assert_close(&y.to_vec().unwrap(), &want, 1e-5, 1e-4, "attention");
    }
}

#[test]
fn silu_matches_formula() {
    let x = rand_tensor(&[1000], 15).scale(20.0).unwrap();
    let y = x.silu().unwrap().to_vec().unwrap();
    let want: Vec<f32> = x
        .to_vec()
        .unwrap()
        .iter()
        .map(|&v| (v as f64 / (1.0 + (-v as f64).exp())) as f32)
        .collect();
    assert_close(&y, &want, 1e-6, 1e-6, "silu");
}

#[test]
fn data_movement_is_exact() {
    let x = rand_tensor(&[2, 3, 4, 5], 16);
    let xv = x.to_vec().unwrap();
    // upsample: y[n, c, i, j] = x[n, c, i/2, j/2]
    let up = x.upsample_nearest2x().unwrap();
    assert_eq!(up.shape(), [2, 3, 8, 10]);
    let uv = up.to_vec().unwrap();
    for (i, v) in uv.iter().enumerate() {
        let (j, ii, nc) = (i % 10, (i / 10) % 8, i / 80);
        assert_eq!(*v, xv[nc * 20 + (ii / 2) * 5 + j / 2]);
    }
    // transpose
    let t = x.reshape(&[2, 3, 20]).unwrap().transpose12().unwrap();
    let tv = t.to_vec().unwrap();
    for n in 0..2 {
        for a in 0..3 {
            for b in 0..20 {
                assert_eq!(tv[n * 60 + b * 3 + a], xv[n * 60 + a * 20 + b]);
            }
        }
    }
    // concat then slice gives the parts back
    let y = rand_tensor(&[2, 2, 4, 5], 17);
    let c = Tensor::cat_channels(&[&x, &y]).unwrap();
    assert_eq!(c.shape(), [2, 5, 4, 5]);
    assert_eq!(c.slice_channels(0, 3).unwrap().to_vec().unwrap(), xv);
    assert_eq!(
        c.slice_channels(3, 5).unwrap().to_vec().unwrap(),
        y.to_vec().unwrap()
    );
    // channel bias broadcast
    let b = rand_tensor(&[2, 3], 18);
    let bv = b.to_vec().unwrap();
    let z = x.add_channel_bias(&b).unwrap().to_vec().unwrap();
    for (i, v) in z.iter().enumerate() {
        assert_eq!(*v, xv[i] + bv[i / 20]);
    }
}

#[test]
fn timestep_embedding_matches_formula() {
    let ts = [0.0f32, 1.0, 37.0, 500.0, 999.0];
    for (dim, flip, shift) in [(32, true, 0.0), (33, false, 1.0), (64, true, 1.0)] {
        let e = elementwise::timestep_embedding(&ts, dim, flip, shift);
        let half = dim / 2;
        for (r, &t) in ts.iter().enumerate() {
            for i in 0..half {
                let f = (-(10000f64.ln()) * i as f64 / (half as f64 - shift as f64)).exp();
                let (s, c) = ((t as f64 * f).sin(), (t as f64 * f).cos());
                let (a, b) = if flip { (c, s) } else { (s, c) };
                // f32 arguments up to 999 carry an absolute error of about 1e-4
                assert!(
                    (e[r * dim + i] as f64 - a).abs() < 2e-4,
                    "dim {dim} t {t} i {i}"
                );
                assert!((e[r * dim + half + i] as f64 - b).abs() < 2e-4);
            }
            if dim % 2 == 1 {
                assert_eq!(e[r * dim + dim - 1], 0.0);
            }
        }
    }
}

#[test]
fn shape_errors_are_errors() {
    let x = rand_tensor(&[1, 3, 4, 4], 19);
    assert!(x
        .conv2d(
            &rand_tensor(&[2, 4, 3, 3], 20),
            None,
            1,
            [1; 4],
            PadMode::Zeros
        )
        .is_err());
    assert!(x
        .group_norm(2, &rand_tensor(&[3], 21), &rand_tensor(&[3], 22), 1e-5)
        .is_err());
    assert!(x.add(&rand_tensor(&[1, 3, 4, 5], 23)).is_err());
    assert!(x.slice_channels(2, 4).is_err());
    assert!(x.reshape(&[5]).is_err());
}

/// The fused clipping + AdamW + EMA update against its formula in f64 (`backend::AdamStep`), on
/// gradients given as three parameters' worth; a non-finite loss leaves everything unchanged.
#[test]
fn adamw_matches_the_formula() {
    use dydiff::backend::{AdamStep, Device};
    let n = 70_001;
    let (p, g, m, e) = (
        rand_vec(n, 1),
        rand_vec(n, 2),
        rand_vec(n, 3),
        rand_vec(n, 5),
    );
    let v: Vec<f32> = rand_vec(n, 4).iter().map(|x| x.abs()).collect();
    let f = |x: f32| f64::from(x);
    let norm: f64 = g.iter().map(|&x| f(x) * f(x)).sum::<f64>().sqrt();
    let h = AdamStep {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
        bc1: 0.19,
        bc2: 0.002,
        max_norm: (0.5 * norm) as f32,
        ema_decay: 0.99,
    };
    let st = |x: &[f32]| Device::Cpu.storage_from_vec(x.to_vec()).unwrap();
    let parts = [st(&g[..10]), st(&g[10..40_000]), st(&g[40_000..])];
    let grads: Vec<_> = parts.iter().collect();
    // one step from (p, m, v, e): the updated arrays and the norm
    let step = |h: &AdamStep, loss: f32| {
        let (mut po, mut mo, mut vo, mut eo) = (st(&p), st(&m), st(&v), st(&e));
        let no = po
            .adamw(&grads, &mut mo, &mut vo, &mut eo, &st(&[loss]), h)
            .unwrap();
        let v = |s: dydiff::backend::Storage| s.to_vec().unwrap();
        (v(po), v(mo), v(vo), v(eo), v(no)[0])
    };
    let (po, mo, vo, eo, no) = step(&h, 0.25);
    let got_norm = f(no);
    assert!(
        (got_norm - norm).abs() < 1e-6 * norm,
        "{got_norm} vs {norm}"
    );
    let scale = f(h.max_norm) / (norm + 1e-6);
    let (mut wp, mut wm, mut wv, mut we) = (vec![], vec![], vec![], vec![]);
    for i in 0..n {
        let gi = f(g[i]) * scale;
        let mi = f(h.beta1) * f(m[i]) + (1.0 - f(h.beta1)) * gi;
        let vi = f(h.beta2) * f(v[i]) + (1.0 - f(h.beta2)) * gi * gi;
        let pi = f(p[i])
            - f(h.lr)
                * ((mi / f(h.bc1)) / ((vi / f(h.bc2)).sqrt() + f(h.eps))
                    + f(h.weight_decay) * f(p[i]));
        wp.push(pi as f32);
        wm.push(mi as f32);
        wv.push(vi as f32);
        we.push((f(h.ema_decay) * f(e[i]) + (1.0 - f(h.ema_decay)) * pi) as f32);
    }
    assert_close(&po, &wp, 1e-6, 1e-5, "p");
    assert_close(&mo, &wm, 1e-7, 1e-5, "m");
    assert_close(&vo, &wv, 1e-7, 1e-5, "v");
    assert_close(&eo, &we, 1e-6, 1e-5, "ema");
    // a norm below the limit is not scaled up: any larger limit gives the same step
    let at = |k: f64| {
        step(
            &AdamStep {
                max_norm: (k * norm) as f32,
                ..h
            },
            0.25,
        )
        .0
    };
    assert_eq!(at(4.0), at(8.0));
    // a non-finite loss changes nothing
    for bad in [f32::NAN, f32::INFINITY] {
        let (po, mo, vo, eo, _) = step(&h, bad);
        assert_eq!(
            (po, mo, vo, eo),
            (p.clone(), m.clone(), v.clone(), e.clone())
        );
    }
}
