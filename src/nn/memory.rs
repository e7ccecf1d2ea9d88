//! Lower bounds on the memory a UNet of a configuration needs, for the checks a command makes
//! before it allocates ([`crate::memory::ensure`]): a request that cannot fit is refused with the
//! size it needs instead of failing an allocation halfway.

use super::UNet2DConfig;
use crate::memory::array;

impl UNet2DConfig {
    /// A lower bound on the activations a forward pass holds for `batch` fields of
    /// `height × width`, in bytes: at least two float32 maps of the first level's width at full
    /// size are alive together (the input convolution's output, kept for the skip connection,
    /// and the first block's output). `None` when the size overflows.
    pub fn min_activation_bytes(&self, batch: usize, height: usize, width: usize) -> Option<u64> {
        array(&[2, batch, self.block_out_channels[0], height, width], 4)
    }

    /// A lower bound on the parameter count: the input and output convolutions and the second
    /// 3×3 convolution of every resnet (`layers_per_block` per down level, `layers_per_block + 1`
    /// per up level), each mapping a level's width to itself. `None` when the count overflows.
    pub fn min_params(&self) -> Option<u64> {
        let ch0 = self.block_out_channels[0] as u64;
        let ends = (self.in_channels as u64)
            .checked_add(self.out_channels as u64)?
            .checked_mul(ch0)?
            .checked_mul(9)?;
        let per_level = (self.layers_per_block as u64)
            .checked_mul(2)?
            .checked_add(1)?
            .checked_mul(9)?;
        self.block_out_channels.iter().try_fold(ends, |a, &ch| {
            let ch = ch as u64;
            a.checked_add(ch.checked_mul(ch)?.checked_mul(per_level)?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_bound_does_not_exceed_the_network() {
        let c = UNet2DConfig::from_json(&serde_json::json!({
            "in_channels": 10, "out_channels": 6, "block_out_channels": [32, 64],
            "norm_num_groups": 8, "layers_per_block": 1, "attention_head_dim": 16,
            "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
            "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
        }))
        .unwrap();
        let net = crate::nn::UNet2D::init(c.clone(), 0, crate::Device::Cpu).unwrap();
        let bound = c.min_params().unwrap();
        assert!(bound > 0 && bound <= net.num_params() as u64, "{bound}");
        assert_eq!(
            c.min_activation_bytes(3, 16, 8),
            Some(2 * 3 * 32 * 16 * 8 * 4)
        );
    }
}
