//! The attention kernels (kernels/attention.cu) against the CPU backend: the output within 2e-6
//! relative to its scale in float32 and 3e-3 on the tensor cores (head dimensions 1 to 128, 1 to
//! 300 tokens, batch 1 and 17); the gradient (recomputing the scores) within 1e-5.

use super::{both, close, cpu, gpu, precision};
use crate::common::{assert_close, rand_vec};
use dydiff::backend::cuda::attention;
use dydiff::backend::cuda::buffer::Buffer;
use dydiff::backend::cuda::gpu::Gpu;
use dydiff::backend::cuda::Precision;
use dydiff::backend::{AttnGeom, BackendStorage};
use std::sync::Arc;

fn dev(g: &Arc<dyn Gpu>, v: &[f32]) -> Buffer {
    Buffer::from_f32(g, v).unwrap()
}

#[test]
fn attention_matches_the_cpu() {
    let g = gpu();
    for (i, &(n, l, heads, d)) in [
        (1, 1, 1, 1),
        (17, 5, 2, 3),
        (2, 64, 4, 32),
        (1, 300, 2, 16),
        (1, 33, 1, 128),
        (2, 100, 2, 64),
    ]
    .iter()
    .enumerate()
    {
        let len = n * l * heads * d;
        let (q, k, v) = (
            rand_vec(len, 50 + i as u64),
            rand_vec(len, 60 + i as u64),
            rand_vec(len, 70 + i as u64),
        );
        let geo = AttnGeom {
            n,
            l,
            heads,
            d,
            scale: 1.0 / (d as f32).sqrt(),
        };
        let want = cpu(&q)
            .attention(&cpu(&k), &cpu(&v), &geo)
            .unwrap()
            .to_vec()
            .unwrap();
        // float32; and on the tensor cores where the head dimension has a kernel (16, 32, 128
        // here), whose products round q·scale, k, v and the probabilities to TF32 (2⁻¹¹
        // relative): an output is a weighted mean of values in [−1, 1] whose weights move by
        // about 2⁻¹¹·|score| each
        for (p, tol) in [(Precision::Fp32, 2e-6), (Precision::Tf32, 3e-3)] {
            let _p = precision(p);
            let got = attention::attention(&dev(&g, &q), &dev(&g, &k), &dev(&g, &v), &geo)
                .unwrap()
                .to_f32()
                .unwrap();
            assert_close(&got, &want, tol, tol, &format!("{geo:?} {p:?}"));
        }
    }
    let b = dev(&g, &[0.0; 129]);
    let e = attention::attention(
        &b,
        &b,
        &b,
        &AttnGeom {
            n: 1,
            l: 1,
            heads: 1,
            d: 129,
            scale: 1.0,
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("head dimension 129"), "{e}");
}

#[test]
fn attention_backward_matches_the_cpu() {
    let _p = precision(Precision::Fp32);
    for &(n, l, heads, d) in &[
        (1, 1, 1, 1),
        (2, 5, 2, 8),
        (1, 33, 1, 32),
        (3, 64, 2, 16),
        (1, 40, 1, 128),
    ] {
        let g = AttnGeom {
            n,
            l,
            heads,
            d,
            scale: 1.0 / (d as f32).sqrt(),
        };
        let len = n * l * heads * d;
        let t = |s| both(&rand_vec(len, s).iter().map(|v| 2.0 * v).collect::<Vec<_>>());
        let ((qc, qg), (kc, kg), (vc, vg), (oc, og)) = (t(20), t(21), t(22), t(23));
        let want = qc.attention_backward(&kc, &vc, &oc, None, &g).unwrap();
        // the forward for training saves each row's log-sum-exp; its output is the plain one's
        let (out, lse) = qg.attention_for_training(&kg, &vg, &g).unwrap();
        let lse = lse.expect("the GPU saves the rows' statistics");
        assert_eq!(
            out.to_vec().unwrap(),
            qg.attention(&kg, &vg, &g).unwrap().to_vec().unwrap()
        );
        // the statistics recomputed by the backward, and the saved ones
        for saved in [None, Some((&out, &lse))] {
            let got = qg.attention_backward(&kg, &vg, &og, saved, &g).unwrap();
            let what = format!("attention {g:?}, saved statistics: {}", saved.is_some());
            close(&got.0, &want.0, 1e-5, &format!("dq {what}"));
            close(&got.1, &want.1, 1e-5, &format!("dk {what}"));
            close(&got.2, &want.2, 1e-5, &format!("dv {what}"));
        }
    }
}
