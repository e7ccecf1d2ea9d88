//! Criterion bench of the UNet forward pass: the benchmark model of BENCHMARKS.md (block channels
//! 64/128/256, two layers per block, attention at the two lower levels, 32 groups, head dim 32,
//! 20 → 12 channels) at batch 8, 32×32. Throughput in FLOP/s.
//!
//!     cargo bench --bench unet

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dydiff::nn::{UNet2D, UNet2DConfig};
use dydiff::{Device, Tensor};

fn unet(c: &mut Criterion) {
    dydiff::backend::cpu::tune_allocator();
    let cfg = UNet2DConfig {
        in_channels: 20,
        out_channels: 12,
        block_out_channels: vec![64, 128, 256],
        layers_per_block: 2,
        down_block_types: vec![
            "DownBlock2D".into(),
            "AttnDownBlock2D".into(),
            "AttnDownBlock2D".into(),
        ],
        up_block_types: vec![
            "AttnUpBlock2D".into(),
            "AttnUpBlock2D".into(),
            "UpBlock2D".into(),
        ],
        norm_num_groups: 32,
        attention_head_dim: Some(32),
        ..UNet2DConfig::default()
    };
    let model = UNet2D::init(cfg, 0, Device::Cpu).unwrap();
    let x = Tensor::zeros(&[8, 20, 32, 32], Device::Cpu).unwrap();
    let t = Tensor::from_vec(vec![500.0; 8], &[8], Device::Cpu).unwrap();
    dydiff::profile::enable(true);
    model.forward(&x, &t).unwrap();
    let flops: f64 = dydiff::profile::totals().values().map(|o| o.flops).sum();
    dydiff::profile::enable(false);
    let mut g = c.benchmark_group("unet_forward");
    g.sample_size(10);
    g.throughput(Throughput::Elements(flops as u64));
    g.bench_function("batch8_32x32", |b| {
        b.iter(|| model.forward(&x, &t).unwrap())
    });
    g.finish();
}

criterion_group!(benches, unet);
criterion_main!(benches);
