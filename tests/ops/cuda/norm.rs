//! The group-norm kernels (kernels/norm.cu): the statistics and the plain norm (with and without
//! SiLU) against the CPU backend within a few float32 ulp; the gradient and the channel sums
//! within 2e-6 of the largest CPU value (the order of the sums differs).

use super::{both, close, close_abs, cpu, gpu, precision};
use crate::common::rand_vec;
use dydiff::backend::cuda::buffer::Buffer;
use dydiff::backend::cuda::norm;
use dydiff::backend::cuda::Precision;
use dydiff::backend::{BackendStorage, NormGeom};

#[test]
fn group_norm_matches_the_cpu() {
    let gpu = gpu();
    for (i, &(n, c, hw, groups, silu)) in [
        (1, 4, 1, 1, false),
        (17, 6, 35, 3, true),
        (2, 64, 256, 32, false),
        (3, 32, 64, 32, true),
    ]
    .iter()
    .enumerate()
    {
        let x: Vec<f32> = rand_vec(n * c * hw, 300 + i as u64)
            .iter()
            .map(|v| 2.0 * v - 0.3)
            .collect();
        let (gamma, beta) = (rand_vec(c, 310 + i as u64), rand_vec(c, 320 + i as u64));
        let g = NormGeom {
            n,
            c,
            hw,
            groups,
            eps: 1e-6,
            silu,
        };
        let (want, _) = cpu(&x).group_norm(&cpu(&gamma), &cpu(&beta), &g).unwrap();
        let (got, _) = norm::group_norm(
            &Buffer::from_f32(&gpu, &x).unwrap(),
            &Buffer::from_f32(&gpu, &gamma).unwrap(),
            &Buffer::from_f32(&gpu, &beta).unwrap(),
            &g,
        )
        .unwrap();
        crate::common::assert_close(
            &got.to_f32().unwrap(),
            &want.to_vec().unwrap(),
            2e-6,
            2e-6,
            &format!("{g:?}"),
        );
    }
}

#[test]
fn sums_and_norm_backward_match_the_cpu() {
    let _p = precision(Precision::Fp32);
    for &(rows, cols) in &[(1, 1), (17, 5), (300, 64)] {
        let (c, g) = both(&rand_vec(rows * cols, 3));
        close(
            &g.sum_rows(rows, cols).unwrap(),
            &c.sum_rows(rows, cols).unwrap(),
            2e-6,
            "sum_rows",
        );
    }
    for &(n, ch, hw, groups) in &[(1, 4, 1, 2), (3, 12, 35, 4), (2, 64, 64, 32)] {
        let geom = NormGeom {
            n,
            c: ch,
            hw,
            groups,
            eps: 1e-5,
            silu: false,
        };
        let x: Vec<f32> = rand_vec(n * ch * hw, 5)
            .iter()
            .map(|v| 3.0 * v + 1.0)
            .collect();
        let (xc, xg) = both(&x);
        let (gc, gg) = both(&rand_vec(ch, 6));
        let (bc, bg) = both(&rand_vec(ch, 7));
        let (dc, dg) = both(&rand_vec(n * ch * hw, 8));
        let (_, sc) = xc.group_norm(&gc, &bc, &geom).unwrap();
        let (_, sg) = xg.group_norm(&gg, &bg, &geom).unwrap();
        let want = xc.group_norm_backward(&gc, &sc, &dc, &geom).unwrap();
        let got = xg.group_norm_backward(&gg, &sg, &dg, &geom).unwrap();
        let what = format!("group norm {geom:?}");
        // dx cancels to nearly 0 in small groups: its terms are O(1)
        close_abs(&got.0, &want.0, 2e-5, 2e-6, &format!("dx {what}"));
        close(&got.1, &want.1, 2e-6, &format!("dgamma {what}"));
        close(&got.2, &want.2, 2e-6, &format!("dbeta {what}"));
    }
}
