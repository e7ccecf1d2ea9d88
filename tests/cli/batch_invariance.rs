//! A sample's result is a function of that sample alone: the same bytes whatever shares its
//! batch, at whatever position, and at any thread count. Swept over small and odd networks
//! (fields down to 4×4, 4–32 channels, every block type, with and without attention, one to
//! three levels) and batch sizes 1–17, for a network forward (inference and training), for
//! `dydiff denoise` and for `dydiff sample`.

use crate::common::{dydiff, fixture, rand_vec, Scratch};
use dydiff::io::npy;
use dydiff::nn::{UNet2D, UNet2DConfig};
use dydiff::tensor::autograd::{backward, Tape};
use dydiff::{Device, Tensor};
use serde_json::{json, Value};

/// Samples in the pool; batches take 1 to all of them.
const POOL: usize = 17;

struct Case {
    name: &'static str,
    config: Value,
    size: usize,
    /// Channels per frame when the network is used in a model folder.
    channels: usize,
}

fn config(channels: &[usize], down: &[&str], up: &[&str], groups: usize, extra: Value) -> Value {
    let mut c = json!({
        "block_out_channels": channels,
        "down_block_types": down,
        "up_block_types": up,
        "norm_num_groups": groups,
        "layers_per_block": 1,
        "attention_head_dim": 8,
        "in_channels": 4,
        "out_channels": 2,
    });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

/// The networks of the sweep.
fn cases() -> Vec<Case> {
    vec![
        // 1 channel, 2 history and 2 future frames, attention at the second level.
        Case {
            name: "two levels, attention below, 8x8",
            config: config(
                &[8, 16],
                &["DownBlock2D", "AttnDownBlock2D"],
                &["AttnUpBlock2D", "UpBlock2D"],
                4,
                json!({}),
            ),
            size: 8,
            channels: 1,
        },
        // 4×4 → 2×2 → 1×1: attention over one token, Winograd tiles larger than the field.
        Case {
            name: "three levels, attention everywhere, 4x4",
            config: config(
                &[4, 8, 12],
                &["AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
                &["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D"],
                4,
                json!({"attention_head_dim": 4, "in_channels": 3, "out_channels": 1}),
            ),
            size: 4,
            channels: 1,
        },
        // Odd widths (partial vector lanes), two layers, no mid-block attention, 144 tokens.
        Case {
            name: "two levels, attention on top, 12x12",
            config: config(
                &[20, 24],
                &["AttnDownBlock2D", "DownBlock2D"],
                &["UpBlock2D", "AttnUpBlock2D"],
                4,
                json!({"layers_per_block": 2, "add_attention": false, "attention_head_dim": 10,
                       "in_channels": 5, "out_channels": 3, "time_embedding_dim": 36}),
            ),
            size: 12,
            channels: 1,
        },
        // No mid block; 3×3 bottom level (one Winograd tile per image).
        Case {
            name: "no mid block, 6x6",
            config: config(
                &[12, 32],
                &["DownBlock2D", "AttnDownBlock2D"],
                &["AttnUpBlock2D", "UpBlock2D"],
                4,
                json!({"mid_block_type": null, "attention_head_dim": 16,
                       "attn_norm_num_groups": 2}),
            ),
            size: 6,
            channels: 2,
        },
        // Plain blocks, 20×20: 49 Winograd tiles per image, so a batch of 17 crosses from the
        // small-image to the large-image convolution schedule.
        Case {
            name: "three plain levels, 20x20",
            config: config(
                &[8, 16, 32],
                &["DownBlock2D", "DownBlock2D", "DownBlock2D"],
                &["UpBlock2D", "UpBlock2D", "UpBlock2D"],
                8,
                json!({"in_channels": 3, "out_channels": 2}),
            ),
            size: 20,
            channels: 1,
        },
        // One level of 32 channels with attention over 1024 tokens (long reductions).
        Case {
            name: "one level, attention over 32x32",
            config: config(
                &[32],
                &["AttnDownBlock2D"],
                &["AttnUpBlock2D"],
                8,
                json!({"attention_head_dim": 32, "in_channels": 2, "out_channels": 1,
                       "mid_block_type": null}),
            ),
            size: 32,
            channels: 1,
        },
    ]
}

fn net(case: &Case, seed: u64) -> UNet2D {
    let c = UNet2DConfig::from_json(&case.config).unwrap();
    UNet2D::init(c, seed, Device::Cpu).unwrap()
}

/// Runs `f` on a pool of `threads` worker threads.
fn with_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

/// The outputs of one forward of the samples `idx` of the pool, one bit pattern per sample.
fn forward(
    unet: &UNet2D,
    inputs: &[Vec<f32>],
    steps: &[f32],
    idx: &[usize],
    shape: [usize; 3],
    training: bool,
) -> Vec<Vec<u32>> {
    let x: Vec<f32> = idx.iter().flat_map(|&i| inputs[i].clone()).collect();
    let t: Vec<f32> = idx.iter().map(|&i| steps[i]).collect();
    let x = Tensor::from_vec(x, &[idx.len(), shape[0], shape[1], shape[2]], Device::Cpu).unwrap();
    let t = Tensor::from_vec(t, &[idx.len()], Device::Cpu).unwrap();
    let y = if training {
        let _tape = Tape::start();
        unet.forward(&x, &t).unwrap().to_vec().unwrap()
    } else {
        unet.forward(&x, &t).unwrap().to_vec().unwrap()
    };
    let per = y.len() / idx.len();
    y.chunks(per)
        .map(|c| c.iter().map(|v| v.to_bits()).collect())
        .collect()
}

/// Every batch size 1–17, each at two rotations of the pool (so every sample sits at many
/// positions), each on 1, 2 or 3 threads, against each sample computed alone on one thread.
fn sweep(case: &Case, training: bool) {
    let unet = net(case, 7);
    let c = &unet.config;
    let shape = [c.in_channels, case.size, case.size];
    let len: usize = shape.iter().product();
    let inputs: Vec<Vec<f32>> = (0..POOL).map(|i| rand_vec(len, 100 + i as u64)).collect();
    let steps: Vec<f32> = (0..POOL).map(|i| (i * 61 % 1000) as f32).collect();
    let alone: Vec<Vec<u32>> = with_threads(1, || {
        (0..POOL)
            .map(|i| forward(&unet, &inputs, &steps, &[i], shape, training).remove(0))
            .collect()
    });
    for batch in 1..=POOL {
        for rotation in [batch, 3 * batch + 1] {
            let idx: Vec<usize> = (0..batch).map(|i| (rotation + i) % POOL).collect();
            let threads = 1 + (batch + rotation) % 3;
            let got = with_threads(threads, || {
                forward(&unet, &inputs, &steps, &idx, shape, training)
            });
            for (pos, (&i, out)) in idx.iter().zip(&got).enumerate() {
                let diff = out.iter().zip(&alone[i]).filter(|(a, b)| a != b).count();
                assert!(
                    diff == 0,
                    "{} ({}): sample {i} at position {pos} of a batch of {batch} on {threads} \
                     threads differs from it alone in {diff} of {} values",
                    case.name,
                    if training { "training" } else { "inference" },
                    out.len()
                );
            }
        }
    }
}

#[test]
fn network_forward_is_batch_and_thread_invariant() {
    for case in cases() {
        sweep(&case, false);
    }
}

#[test]
fn training_forward_is_batch_and_thread_invariant() {
    for case in cases() {
        sweep(&case, true);
    }
}

/// A training step's loss and every parameter gradient (sums over the batch) are the same bits
/// on 1, 2 and 3 threads.
#[test]
fn training_gradients_do_not_depend_on_the_thread_count() {
    for case in cases() {
        let c = UNet2DConfig::from_json(&case.config).unwrap();
        let batch = 5;
        let x = rand_vec(batch * c.in_channels * case.size * case.size, 61);
        let y = rand_vec(batch * c.out_channels * case.size * case.size, 62);
        let step = |threads: usize| {
            with_threads(threads, || {
                let unet = net(&case, 9);
                let xt = Tensor::from_vec(
                    x.clone(),
                    &[batch, c.in_channels, case.size, case.size],
                    Device::Cpu,
                )
                .unwrap();
                let yt = Tensor::from_vec(
                    y.clone(),
                    &[batch, c.out_channels, case.size, case.size],
                    Device::Cpu,
                )
                .unwrap();
                let t =
                    Tensor::from_vec(vec![10.0, 200.0, 999.0, 0.0, 500.0], &[batch], Device::Cpu)
                        .unwrap();
                let _tape = Tape::start();
                let loss = unet.forward(&xt, &t).unwrap().mse(&yt).unwrap();
                backward(&loss).unwrap();
                let mut bits = vec![loss.scalar().unwrap().to_bits()];
                for (_, p) in unet.params() {
                    let g = p.grad().expect("every parameter has a gradient");
                    bits.extend(g.to_vec().unwrap().iter().map(|v| v.to_bits()));
                }
                bits
            })
        };
        let one = step(1);
        for threads in [2, 3] {
            assert!(
                step(threads) == one,
                "{}: the training step on {threads} threads differs from 1 thread",
                case.name
            );
        }
    }
}

/// `dydiff denoise` gives every row the bytes it gets alone: files of 1 to 17 rows drawn from a
/// pool of 17 (so each row sits at many positions), on 1–3 threads.
#[test]
fn denoise_row_does_not_depend_on_the_others() {
    let s = Scratch::new("denoise-invariance");
    for (j, case) in cases().iter().enumerate() {
        let unet = net(case, 3);
        let dir = s.path(&format!("unet{j}"));
        unet.save_pretrained(&dir).unwrap();
        let c = &unet.config;
        let per = c.in_channels * case.size * case.size;
        let pool: Vec<Vec<f32>> = (0..POOL)
            .map(|i| rand_vec(per, 40 + (j * POOL + i) as u64))
            .collect();
        let (input, out) = (s.path("in.npy"), s.path("out.npy"));
        // the outputs of rows `idx` of the pool, denoised together in one file
        let run = |idx: &[usize], threads: usize| -> Vec<Vec<u32>> {
            let x: Vec<f32> = idx.iter().flat_map(|&i| pool[i].clone()).collect();
            npy::write(
                &input,
                &[idx.len(), c.in_channels, case.size, case.size],
                &x,
            )
            .unwrap();
            let (ok, err) = dydiff([
                "--threads".as_ref(),
                threads.to_string().as_ref(),
                "denoise".as_ref(),
                "--unet".as_ref(),
                dir.as_os_str(),
                "--input".as_ref(),
                input.as_os_str(),
                "--timestep".as_ref(),
                "321".as_ref(),
                "--out".as_ref(),
                out.as_os_str(),
            ]);
            assert!(ok, "{}: {err}", case.name);
            let y = npy::read(&out).unwrap().data;
            y.chunks(y.len() / idx.len())
                .map(|r| r.iter().map(|v| v.to_bits()).collect())
                .collect()
        };
        let alone: Vec<Vec<u32>> = (0..POOL).map(|i| run(&[i], 1).remove(0)).collect();
        for rows in 2..=POOL {
            let idx: Vec<usize> = (0..rows).map(|i| (2 * rows + i) % POOL).collect();
            let threads = 1 + rows % 3;
            for (pos, (&i, got)) in idx.iter().zip(run(&idx, threads)).enumerate() {
                assert!(
                    got == alone[i],
                    "{}: row {i} at position {pos} of {rows} rows on {threads} threads differs \
                     from it alone",
                    case.name
                );
            }
        }
    }
}

/// `dydiff sample` gives the same bytes for every `--batch` from 1 to 17 and 1–3 threads, on
/// small networks (a model folder around each network of the sweep); and with `--precision
/// bf16` on a CPU with AVX512-BF16, for batches 2, 3, 7 and 17 against 1.
#[test]
fn sample_is_the_same_for_every_batch() {
    let s = Scratch::new("sample-invariance");
    let scheduler = fixture("sampler/model_dyn/scheduler/scheduler_config.json");
    for (j, case) in cases().iter().enumerate() {
        // The network's channels as (history + future) frames of C channels.
        let cfg = &case.config;
        let (cin, cout) = (
            cfg["in_channels"].as_u64().unwrap() as usize,
            cfg["out_channels"].as_u64().unwrap() as usize,
        );
        let channels = case.channels;
        let (frames, future) = (cin / channels, cout / channels);
        let model = s.path(&format!("model{j}"));
        std::fs::create_dir_all(model.join("scheduler")).unwrap();
        std::fs::copy(&scheduler, model.join("scheduler/scheduler_config.json")).unwrap();
        let process = json!({
            "method": "dydiff", "dyn_eta": 0.5, "history": frames - future, "future": future,
            "channels": channels, "height": case.size, "width": case.size,
            "data_scale": 1.5, "data_shift": 0.25,
        });
        std::fs::write(model.join("dydiff.json"), process.to_string()).unwrap();
        net(case, 5).save_pretrained(&model.join("unet")).unwrap();
        let samples = 3;
        let obs = s.path("obs.npy");
        let shape = [samples, frames - future, channels, case.size, case.size];
        npy::write(
            &obs,
            &shape,
            &rand_vec(shape.iter().product(), 90 + j as u64),
        )
        .unwrap();
        let run = |batch: usize, threads: usize, precision: &str| {
            let out = s.path("fc.npy");
            let (ok, err) = dydiff([
                "--precision",
                precision,
                "--threads",
                &threads.to_string(),
                "sample",
                "--model",
                model.to_str().unwrap(),
                "--input",
                obs.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--members",
                "6",
                "--steps",
                "3",
                "--ddim-eta",
                "0.5",
                "--batch",
                &batch.to_string(),
            ]);
            assert!(ok, "{}: {err}", case.name);
            npy::read(&out).unwrap().data
        };
        let bf16 = dydiff::backend::cpu::bf16::available();
        let runs = (2..=POOL).map(|b| (b, "fp32")).chain(
            [2, 3, 7, POOL]
                .into_iter()
                .filter(|_| bf16)
                .map(|b| (b, "bf16")),
        );
        let reference = |precision: &str| run(1, 1, precision);
        let (fp32, bf) = (reference("fp32"), bf16.then(|| reference("bf16")));
        for (batch, precision) in runs {
            let reference = if precision == "bf16" {
                bf.as_ref().unwrap()
            } else {
                &fp32
            };
            let got = run(batch, 1 + batch % 3, precision);
            let diff = got
                .iter()
                .zip(reference)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            assert!(
                diff == 0,
                "{} {precision}: --batch {batch} differs from --batch 1 in {diff} of {} values",
                case.name,
                got.len()
            );
        }
    }
}
