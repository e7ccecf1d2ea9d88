//! Small training runs compared: the data and network of the CLI training tests, and a
//! comparison of two runs' logs and states within stated tolerances.

use super::Scratch;

/// Sequences with temporal structure, `(5, 8, 2, 8, 8)`, written to `path`.
pub fn write_sequences(path: &std::path::Path) {
    let (n, l, e) = (5, 8, 2 * 8 * 8);
    let noise = super::rand_vec(n * l * e, 17);
    let mut x = vec![0.0f32; n * l * e];
    for i in 0..n * l {
        let prev = if i % l > 0 { x[(i - 1) * e] } else { 0.0 };
        for j in 0..e {
            x[i * e + j] = 0.8 * prev + noise[i * e + j];
        }
    }
    std::fs::write(path, dydiff::io::npy::encode(&[n, l, 2, 8, 8], &x)).unwrap();
}

/// A `--unet-config` of a small network (two levels of 8 and 16 channels, attention at the lower).
pub fn small_net(s: &Scratch) -> std::path::PathBuf {
    let net = s.path("unet.json");
    std::fs::write(
        &net,
        r#"{"block_out_channels": [8, 16], "norm_num_groups": 4, "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "attention_head_dim": 8}"#,
    )
    .unwrap();
    net
}

/// The flags of the small training runs compared by the tests, but `--steps`: history 2,
/// future 2, a batch of `batch` rows, `--lr 1e-3` after one warm-up step and constant after it
/// (so that a run may be extended with `--resume`), a log line every step, a checkpoint every 2,
/// seed 4.
pub fn run_flags(batch: usize) -> Vec<String> {
    let batch = batch.to_string();
    [
        "--history",
        "2",
        "--future",
        "2",
        "--batch",
        &batch,
        "--lr",
        "1e-3",
        "--warmup-steps",
        "1",
        "--constant-lr",
        "--log-every",
        "1",
        "--checkpoint-every",
        "2",
        "--seed",
        "4",
    ]
    .map(String::from)
    .to_vec()
}

/// Every log line's loss, per step.
pub fn losses(out: &std::path::Path, log: &str) -> Vec<f64> {
    std::fs::read_to_string(out.join(log))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

/// The tensors of a safetensors file, by name.
pub fn tensors(
    path: &std::path::Path,
) -> std::collections::HashMap<String, (Vec<usize>, Vec<f32>)> {
    dydiff::io::safetensors::read(path).unwrap()
}

/// Two training runs at `--lr 1e-3` agree: losses within `rel`; weights and EMA within 5% of the
/// most Adam can move a weight in the run's steps (lr per step: an element whose gradient is near
/// its rounding error moves by up to lr either way, so differences are measured in lr); the
/// moments within `rel` of each tensor's largest value.
pub fn same_run(a: &std::path::Path, b: &std::path::Path, state: &str, log: &str, rel: f64) {
    let steps: f64 = dydiff::io::safetensors::read_metadata(&a.join(state)).unwrap()
        ["dydiff_train_step"]
        .parse()
        .unwrap();
    let move_ = steps * 1e-3;
    let (la, lb) = (losses(a, log), losses(b, log));
    assert_eq!(la.len(), lb.len());
    for (x, y) in la.iter().zip(&lb) {
        assert!((x - y).abs() <= rel * x.abs(), "loss {x} vs {y}");
    }
    let (ta, tb) = (tensors(&a.join(state)), tensors(&b.join(state)));
    assert_eq!(ta.len(), tb.len());
    for (name, (shape, va)) in &ta {
        let (shape_b, vb) = &tb[name];
        assert_eq!(shape, shape_b, "{name}");
        let worst = f64::from(
            va.iter()
                .zip(vb)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs())),
        );
        let scale = f64::from(va.iter().fold(0f32, |m, v| m.max(v.abs())));
        let moment = name.starts_with("m/") || name.starts_with("v/");
        if name.ends_with("to_k.bias") {
            // Its gradient is 0 in exact arithmetic (a key bias adds the same q·b to every score
            // of a row, which the softmax ignores): what is left is rounding, which Adam scales
            // to steps of ±lr, and its moments are rounding noise.
            assert!(
                moment || worst <= 2.0 * move_,
                "{name}: worst difference {worst}"
            );
            continue;
        }
        let allowed = if moment { rel * scale } else { 0.05 * move_ };
        assert!(
            worst <= allowed,
            "{name}: worst difference {worst} (allowed {allowed}), max |value| {scale}"
        );
    }
}
