//! The CPU backend: the reference implementation of the op set, multithreaded with rayon and
//! vectorised (the `gemm` crate for products, run-time dispatched AVX-512/AVX2 loops elsewhere).
//! One file per op family; [`reference`] holds the plain versions the tests compare against.

pub mod attention;
pub mod conv;
pub mod elementwise;
pub mod matmul;
pub mod norm;
pub mod reference;
pub(crate) mod simd;

use crate::backend::{AttnGeom, BackendStorage, BinaryOp, ConvGeom, MatmulGeom, NormGeom};
use crate::error::Result;
use crate::profile::scope;

/// Host memory.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuStorage(Vec<f32>);

impl CpuStorage {
    pub fn from_vec(v: Vec<f32>) -> Self {
        CpuStorage(v)
    }
    pub fn as_slice(&self) -> &[f32] {
        &self.0
    }
    pub fn into_vec(self) -> Vec<f32> {
        self.0
    }
}

fn wrap(v: Vec<f32>) -> Result<CpuStorage> {
    Ok(CpuStorage(v))
}

impl BackendStorage for CpuStorage {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn to_vec(&self) -> Result<Vec<f32>> {
        Ok(self.0.clone())
    }
    fn conv2d(&self, w: &Self, b: Option<&Self>, g: &ConvGeom) -> Result<Self> {
        let _s = scope("conv2d", g.flops());
        wrap(conv::conv2d(&self.0, &w.0, b.map(|b| b.as_slice()), g))
    }
    fn conv2d_backward(
        &self,
        w: &Self,
        dy: &Self,
        g: &ConvGeom,
        need_dx: bool,
    ) -> Result<(Option<Self>, Self, Self)> {
        let _s = scope(
            "conv2d_backward",
            g.flops() * if need_dx { 2.0 } else { 1.0 },
        );
        let (dx, dw, db) = conv::conv2d_backward(&self.0, &w.0, &dy.0, g, need_dx);
        Ok((dx.map(CpuStorage), CpuStorage(dw), CpuStorage(db)))
    }
    fn matmul(&self, b: &Self, g: &MatmulGeom) -> Result<Self> {
        let _s = scope("matmul", 2.0 * (g.batch * g.m * g.n * g.k) as f64);
        wrap(matmul::matmul(&self.0, &b.0, g))
    }
    fn linear(&self, w: &Self, b: Option<&Self>, m: usize, k: usize, n: usize) -> Result<Self> {
        let _s = scope("linear", 2.0 * (m * n * k) as f64);
        wrap(matmul::linear(
            &self.0,
            &w.0,
            b.map(|b| b.as_slice()),
            m,
            k,
            n,
        ))
    }
    fn sum_rows(&self, rows: usize, cols: usize) -> Result<Self> {
        wrap(elementwise::sum_rows(&self.0, rows, cols))
    }
    fn group_norm(&self, gamma: &Self, beta: &Self, g: &NormGeom) -> Result<(Self, Self)> {
        let _s = scope("group_norm", 0.0);
        let (y, stats) = norm::group_norm(&self.0, &gamma.0, &beta.0, g);
        Ok((CpuStorage(y), CpuStorage(stats)))
    }
    fn group_norm_backward(
        &self,
        gamma: &Self,
        stats: &Self,
        dy: &Self,
        g: &NormGeom,
    ) -> Result<(Self, Self, Self)> {
        let _s = scope("group_norm_backward", 0.0);
        let (dx, dg, db) = norm::group_norm_backward(&self.0, &gamma.0, &stats.0, &dy.0, g);
        Ok((CpuStorage(dx), CpuStorage(dg), CpuStorage(db)))
    }
    fn silu(&self) -> Result<Self> {
        let _s = scope("silu", 0.0);
        wrap(elementwise::silu(&self.0))
    }
    fn silu_backward(&self, dy: &Self) -> Result<Self> {
        wrap(elementwise::silu_backward(&self.0, &dy.0))
    }
    fn attention(&self, k: &Self, v: &Self, g: &AttnGeom) -> Result<Self> {
        let _s = scope("attention", 4.0 * (g.n * g.heads * g.l * g.l * g.d) as f64);
        wrap(attention::attention(&self.0, &k.0, &v.0, g))
    }
    fn attention_backward(
        &self,
        k: &Self,
        v: &Self,
        dout: &Self,
        g: &AttnGeom,
    ) -> Result<(Self, Self, Self)> {
        let _s = scope(
            "attention_backward",
            10.0 * (g.n * g.heads * g.l * g.l * g.d) as f64,
        );
        let (dq, dk, dv) = attention::attention_backward(&self.0, &k.0, &v.0, &dout.0, g);
        Ok((CpuStorage(dq), CpuStorage(dk), CpuStorage(dv)))
    }
    fn upsample_nearest2x(&self, nc: usize, h: usize, w: usize) -> Result<Self> {
        let _s = scope("upsample", 0.0);
        wrap(elementwise::upsample_nearest2x(&self.0, nc, h, w))
    }
    fn upsample_nearest2x_backward(&self, nc: usize, h: usize, w: usize) -> Result<Self> {
        wrap(elementwise::upsample_nearest2x_backward(&self.0, nc, h, w))
    }
    fn binary(&self, rhs: &Self, op: BinaryOp) -> Result<Self> {
        let _s = scope("elementwise", 0.0);
        wrap(elementwise::binary(&self.0, &rhs.0, op))
    }
    fn affine(&self, mul: f32, add: f32) -> Result<Self> {
        let _s = scope("elementwise", 0.0);
        wrap(elementwise::affine(&self.0, mul, add))
    }
    fn add_channel_bias(&self, b: &Self, _n: usize, _c: usize, hw: usize) -> Result<Self> {
        let _s = scope("elementwise", 0.0);
        wrap(elementwise::add_channel_bias(&self.0, &b.0, hw))
    }
    fn transpose12(&self, n: usize, a: usize, b: usize) -> Result<Self> {
        let _s = scope("transpose", 0.0);
        wrap(elementwise::transpose12(&self.0, n, a, b))
    }
    fn concat_channels(parts: &[&Self], n: usize, cs: &[usize], hw: usize) -> Result<Self> {
        let _s = scope("concat", 0.0);
        let ps: Vec<&[f32]> = parts.iter().map(|p| p.as_slice()).collect();
        wrap(elementwise::concat_channels(&ps, n, cs, hw))
    }
    fn slice_channels(
        &self,
        n: usize,
        c: usize,
        hw: usize,
        start: usize,
        end: usize,
    ) -> Result<Self> {
        wrap(elementwise::slice_channels(&self.0, n, c, hw, start, end))
    }
    fn slice_channels_backward(
        &self,
        n: usize,
        c: usize,
        hw: usize,
        start: usize,
        end: usize,
    ) -> Result<Self> {
        wrap(elementwise::slice_channels_backward(
            &self.0, n, c, hw, start, end,
        ))
    }
    fn sum_all(&self) -> Result<f32> {
        Ok(elementwise::sum_all(&self.0))
    }
    fn timestep_embedding(
        &self,
        dim: usize,
        flip_sin_to_cos: bool,
        freq_shift: f32,
    ) -> Result<Self> {
        wrap(elementwise::timestep_embedding(
            &self.0,
            dim,
            flip_sin_to_cos,
            freq_shift,
        ))
    }
}
