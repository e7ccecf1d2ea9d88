//! The building blocks of `UNet2DModel`, each matching its diffusers class and state-dict names:
//! `ResnetBlock2D`, `Attention` (the spatial self-attention block), `Downsample2D`,
//! `Upsample2D`, and the down, up and middle blocks that group them.

use super::{Conv2d, GroupNorm, Linear, ParamBuilder};
use crate::backend::PadMode;
use crate::error::{Error, Result};
use crate::rng::NoiseKey;
use crate::tensor::{ConvTail, Tensor};

/// diffusers `ResnetBlock2D` (`time_embedding_norm = "default"`, pre-norm):
/// `h = conv1(silu(norm1(x))) + proj(silu(temb))`, `h = conv2(dropout(silu(norm2(h))))`,
/// `out = (shortcut(x) + h) / output_scale_factor`, the shortcut a 1×1 convolution when the
/// channel count changes. The dropout acts only in a call that asks for it ([`Dropout`]).
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    output_scale_factor: f32,
    /// The dropout probability (the network's `dropout`).
    dropout: f32,
    /// This block's dropout layer: its place among the network's resnet blocks in order of
    /// construction (down blocks, middle block, up blocks), a word of the masks' counter.
    layer: u32,
}

/// Settings shared by the blocks of one network.
#[derive(Clone, Copy, Debug)]
pub struct BlockSettings {
    pub temb: usize,
    pub groups: usize,
    pub eps: f32,
    /// The resnet blocks' dropout probability.
    pub dropout: f32,
    /// What the 3×3 convolutions' padding holds.
    pub pad_mode: PadMode,
}

/// Dropout in one network call (docs/random.md, “Dropout masks”): active in every resnet block
/// with probability the network's `dropout`, each block's masks drawn from `key` for the rows'
/// (sample, member) pairs `rows` (a [`crate::diffusion::ddim::rows_tensor`]), so that a row's
/// masks do not depend on what else shares its batch. Without one, dropout is the identity, as in
/// PyTorch's evaluation mode.
#[derive(Clone, Copy, Debug)]
pub struct Dropout<'a> {
    pub key: NoiseKey,
    pub rows: &'a Tensor,
}

impl ResnetBlock2D {
    pub fn new(
        b: &mut ParamBuilder,
        p: &str,
        ci: usize,
        co: usize,
        s: &BlockSettings,
        output_scale_factor: f32,
    ) -> Result<Self> {
        Ok(ResnetBlock2D {
            norm1: GroupNorm::new(
                b,
                &format!("{p}.norm1"),
                ci,
                s.groups,
                s.eps,
                "norm_num_groups",
            )?,
            conv1: Conv2d::new(b, &format!("{p}.conv1"), ci, co, 3, 1, [1; 4])?
                .with_pad_mode(s.pad_mode),
            time_emb_proj: Linear::new(b, &format!("{p}.time_emb_proj"), s.temb, co)?,
            norm2: GroupNorm::new(
                b,
                &format!("{p}.norm2"),
                co,
                s.groups,
                s.eps,
                "norm_num_groups",
            )?,
            conv2: Conv2d::new(b, &format!("{p}.conv2"), co, co, 3, 1, [1; 4])?
                .with_pad_mode(s.pad_mode),
            conv_shortcut: if ci != co {
                Some(Conv2d::new(
                    b,
                    &format!("{p}.conv_shortcut"),
                    ci,
                    co,
                    1,
                    1,
                    [0; 4],
                )?)
            } else {
                None
            },
            output_scale_factor,
            dropout: s.dropout,
            layer: b.next_layer(),
        })
    }

    /// The dropout of this block in a call, if it acts.
    fn dropout_of<'a>(&self, drop: Option<&Dropout<'a>>) -> Option<Dropout<'a>> {
        drop.copied().filter(|_| self.dropout > 0.0)
    }

    /// `silu(norm2(h))`, then the dropout if it acts.
    fn mid_activation(&self, h: &Tensor, drop: Option<Dropout>) -> Result<Tensor> {
        let a = self.norm2.forward_silu(h)?;
        match drop {
            Some(d) => a.dropout(d.rows, d.key, self.layer, self.dropout),
            None => Ok(a),
        }
    }

    /// `temb_act` is `silu(temb)`, computed once per network evaluation. Without a tape, each
    /// convolution takes its group norm, SiLU, time embedding, residual and scale with it
    /// ([`Tensor::conv2d_fused`]: one kernel on the GPU, the same bits on the CPU); with dropout
    /// acting, the second convolution's norm and SiLU come before it, unfused.
    pub fn forward(&self, x: &Tensor, temb_act: &Tensor, drop: Option<&Dropout>) -> Result<Tensor> {
        let drop = self.dropout_of(drop);
        if let Some(out) = self.forward_fused(x, None, temb_act, drop)? {
            return Ok(out);
        }
        let h = self.conv1.forward(&self.norm1.forward_silu(x)?)?;
        let h = h.add_channel_bias(&self.time_emb_proj.forward(temb_act)?)?;
        let h = self.conv2.forward(&self.mid_activation(&h, drop)?)?;
        let out = match &self.conv_shortcut {
            Some(c) => c.forward(x)?.add(&h)?,
            None => x.add(&h)?,
        };
        if self.output_scale_factor == 1.0 {
            Ok(out)
        } else {
            out.scale(1.0 / self.output_scale_factor)
        }
    }

    /// The block on `x` concatenated with an up block's skip connection along channels: without a
    /// tape the convolutions read the two in place.
    pub fn forward_skip(
        &self,
        x: &Tensor,
        skip: &Tensor,
        temb_act: &Tensor,
        drop: Option<&Dropout>,
    ) -> Result<Tensor> {
        match self.forward_fused(x, Some(skip), temb_act, self.dropout_of(drop))? {
            Some(out) => Ok(out),
            None => self.forward(&Tensor::cat_channels(&[x, skip])?, temb_act, drop),
        }
    }

    /// The block as two fused convolutions (the first reading `x ⧺ skip`), or `None` on a
    /// recording tape.
    fn forward_fused(
        &self,
        x: &Tensor,
        skip: Option<&Tensor>,
        temb_act: &Tensor,
        drop: Option<Dropout>,
    ) -> Result<Option<Tensor>> {
        let mut inputs = vec![x, temb_act, &self.conv1.weight, &self.time_emb_proj.weight];
        inputs.extend(skip);
        if Tensor::recorded(&inputs) {
            return Ok(None);
        }
        let temb = self.time_emb_proj.forward(temb_act)?;
        fn norm(n: &GroupNorm) -> Option<(&Tensor, &Tensor, usize, f32)> {
            Some((&n.weight, &n.bias, n.groups, n.eps))
        }
        // conv1 and (if the block has one) the 1×1 shortcut read the same input, computed together
        let head = ConvTail {
            skip,
            shortcut: self
                .conv_shortcut
                .as_ref()
                .map(|c| (&c.weight, Some(&c.bias))),
            norm: norm(&self.norm1),
            silu: true,
            temb: Some(&temb),
            ..ConvTail::NONE
        };
        let Some((h, shortcut)) = x.conv2d_fused(
            &self.conv1.weight,
            Some(&self.conv1.bias),
            self.conv1.geometry(),
            &head,
        )?
        else {
            return Ok(None);
        };
        let shortcut = match (shortcut, skip) {
            (Some(s), _) => s,
            (None, None) => x.clone(),
            (None, Some(s)) => Tensor::cat_channels(&[x, s])?,
        };
        let tail = ConvTail {
            residual: Some(&shortcut),
            scale: 1.0 / self.output_scale_factor,
            ..ConvTail::NONE
        };
        if drop.is_some() {
            let a = self.mid_activation(&h, drop)?;
            return Ok(a
                .conv2d_fused(
                    &self.conv2.weight,
                    Some(&self.conv2.bias),
                    self.conv2.geometry(),
                    &tail,
                )?
                .map(|(y, _)| y));
        }
        let tail = ConvTail {
            norm: norm(&self.norm2),
            silu: true,
            ..tail
        };
        Ok(h.conv2d_fused(
            &self.conv2.weight,
            Some(&self.conv2.bias),
            self.conv2.geometry(),
            &tail,
        )?
        .map(|(y, _)| y))
    }
}

/// diffusers `Attention` as built by the 2-D UNet blocks (`_from_deprecated_attn_block`):
/// group norm, `to_q`/`to_k`/`to_v` projections, `heads` heads of `dim_head` with scale
/// `dim_head^−½`, `to_out.0`, the residual added, the sum divided by `rescale_output_factor`.
pub struct AttentionBlock {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    rescale_output_factor: f32,
}

impl AttentionBlock {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        b: &mut ParamBuilder,
        p: &str,
        channels: usize,
        head_dim: usize,
        groups: usize,
        groups_key: &str,
        eps: f32,
        rescale_output_factor: f32,
    ) -> Result<Self> {
        let heads = channels / head_dim;
        let inner = heads * head_dim;
        if heads == 0 {
            return Err(crate::Error::Config(format!(
                "config key attention_head_dim = {head_dim} exceeds the {channels} channels of {p}"
            )));
        }
        Ok(AttentionBlock {
            group_norm: GroupNorm::new(
                b,
                &format!("{p}.group_norm"),
                channels,
                groups,
                eps,
                groups_key,
            )?,
            to_q: Linear::new(b, &format!("{p}.to_q"), channels, inner)?,
            to_k: Linear::new(b, &format!("{p}.to_k"), channels, inner)?,
            to_v: Linear::new(b, &format!("{p}.to_v"), channels, inner)?,
            to_out: Linear::new(b, &format!("{p}.to_out.0"), inner, channels)?,
            heads,
            rescale_output_factor,
        })
    }

    /// The attention after resnet `i` of a down or up block `p`.
    fn in_block(
        b: &mut ParamBuilder,
        p: &str,
        i: usize,
        channels: usize,
        head_dim: usize,
        s: &BlockSettings,
    ) -> Result<Self> {
        let name = format!("{p}.attentions.{i}");
        AttentionBlock::new(
            b,
            &name,
            channels,
            head_dim,
            s.groups,
            "norm_num_groups",
            s.eps,
            1.0,
        )
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !Tensor::recorded(&[x, &self.to_q.weight]) {
            // without a tape: the projections normalise and read the image in place, the output
            // projection writes it back with the residual and scale (the same bits on the CPU)
            let projections = [
                (&self.to_q.weight, Some(&self.to_q.bias)),
                (&self.to_k.weight, Some(&self.to_k.bias)),
                (&self.to_v.weight, Some(&self.to_v.bias)),
            ];
            let gn = &self.group_norm;
            let norm = Some((&gn.weight, &gn.bias, gn.groups, gn.eps));
            let qkv: [Tensor; 3] = x
                .tokens_linear(norm, &projections)?
                .try_into()
                .map_err(|_| Error::shape("attention", "three projections"))?;
            let [q, k, v] = qkv;
            let o = Tensor::attention(&q, &k, &v, self.heads)?;
            drop((q, k, v));
            let scale = 1.0 / self.rescale_output_factor;
            return o.linear_to_channels(&self.to_out.weight, Some(&self.to_out.bias), x, scale);
        }
        let (n, c, h, w) = match *x.shape() {
            [n, c, h, w] => (n, c, h, w),
            _ => unreachable!("blocks only see NCHW tensors"),
        };
        let tokens = self
            .group_norm
            .forward(x)?
            .reshape(&[n, c, h * w])?
            .transpose12()?;
        let q = self.to_q.forward(&tokens)?;
        let k = self.to_k.forward(&tokens)?;
        let v = self.to_v.forward(&tokens)?;
        drop(tokens);
        let o = Tensor::attention(&q, &k, &v, self.heads)?;
        drop((q, k, v));
        let o = self
            .to_out
            .forward(&o)?
            .transpose12()?
            .reshape(&[n, c, h, w])?;
        let out = o.add(x)?;
        if self.rescale_output_factor == 1.0 {
            Ok(out)
        } else {
            out.scale(1.0 / self.rescale_output_factor)
        }
    }
}

/// `DownBlock2D` / `AttnDownBlock2D`: resnets (each followed by attention in the `Attn` kind),
/// then a stride-2 3×3 convolution unless it is the last level.
pub struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<AttentionBlock>,
    downsample: Option<Conv2d>,
}

impl DownBlock {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        b: &mut ParamBuilder,
        p: &str,
        ci: usize,
        co: usize,
        layers: usize,
        attention_head_dim: Option<usize>,
        add_downsample: bool,
        downsample_padding: usize,
        s: &BlockSettings,
    ) -> Result<Self> {
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for i in 0..layers {
            let cin = if i == 0 { ci } else { co };
            resnets.push(ResnetBlock2D::new(
                b,
                &format!("{p}.resnets.{i}"),
                cin,
                co,
                s,
                1.0,
            )?);
            if let Some(hd) = attention_head_dim {
                attentions.push(AttentionBlock::in_block(b, p, i, co, hd, s)?);
            }
        }
        // Downsample2D(padding=0) pads bottom and right by one with zeros (F.pad) before its
        // convolution, whatever the convolution's padding mode.
        let (pad, pad_mode) = if downsample_padding == 0 {
            ([0, 1, 0, 1], PadMode::Zeros)
        } else {
            ([downsample_padding; 4], s.pad_mode)
        };
        let downsample = if add_downsample {
            Some(
                Conv2d::new(b, &format!("{p}.downsamplers.0.conv"), co, co, 3, 2, pad)?
                    .with_pad_mode(pad_mode),
            )
        } else {
            None
        };
        Ok(DownBlock {
            resnets,
            attentions,
            downsample,
        })
    }

    /// Runs the block, pushing each output that the up path will concatenate onto `skips`.
    pub fn forward(
        &self,
        mut h: Tensor,
        temb_act: &Tensor,
        skips: &mut Vec<Tensor>,
        drop: Option<&Dropout>,
    ) -> Result<Tensor> {
        for (i, r) in self.resnets.iter().enumerate() {
            h = r.forward(&h, temb_act, drop)?;
            if let Some(a) = self.attentions.get(i) {
                h = a.forward(&h)?;
            }
            skips.push(h.clone());
        }
        if let Some(d) = &self.downsample {
            h = d.forward(&h)?;
            skips.push(h.clone());
        }
        Ok(h)
    }
}

/// `UpBlock2D` / `AttnUpBlock2D`: each resnet takes the previous output concatenated with one
/// skip connection; then nearest 2× upsampling and a 3×3 convolution unless it is the last level.
pub struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<AttentionBlock>,
    upsample: Option<Conv2d>,
}

impl UpBlock {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        b: &mut ParamBuilder,
        p: &str,
        ci: usize,
        co: usize,
        prev: usize,
        layers: usize,
        attention_head_dim: Option<usize>,
        add_upsample: bool,
        s: &BlockSettings,
    ) -> Result<Self> {
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for i in 0..layers {
            let skip = if i == layers - 1 { ci } else { co };
            let cin = if i == 0 { prev } else { co };
            resnets.push(ResnetBlock2D::new(
                b,
                &format!("{p}.resnets.{i}"),
                cin + skip,
                co,
                s,
                1.0,
            )?);
            if let Some(hd) = attention_head_dim {
                attentions.push(AttentionBlock::in_block(b, p, i, co, hd, s)?);
            }
        }
        let upsample = if add_upsample {
            Some(
                Conv2d::new(b, &format!("{p}.upsamplers.0.conv"), co, co, 3, 1, [1; 4])?
                    .with_pad_mode(s.pad_mode),
            )
        } else {
            None
        };
        Ok(UpBlock {
            resnets,
            attentions,
            upsample,
        })
    }

    pub fn num_skips(&self) -> usize {
        self.resnets.len()
    }

    /// Runs the block, consuming its skip connections from the end of `skips`.
    pub fn forward(
        &self,
        mut h: Tensor,
        temb_act: &Tensor,
        skips: &mut Vec<Tensor>,
        drop: Option<&Dropout>,
    ) -> Result<Tensor> {
        for (i, r) in self.resnets.iter().enumerate() {
            let skip = skips
                .pop()
                .expect("the down path pushes one skip per up-block resnet");
            h = r.forward_skip(&h, &skip, temb_act, drop)?;
            std::mem::drop(skip);
            if let Some(a) = self.attentions.get(i) {
                h = a.forward(&h)?;
            }
        }
        if let Some(u) = &self.upsample {
            // without a tape the convolution reads the image upsampled in place
            let up = ConvTail {
                upsample: true,
                ..ConvTail::NONE
            };
            h = match h.conv2d_fused(&u.weight, Some(&u.bias), u.geometry(), &up)? {
                Some((y, _)) => y,
                None => u.forward(&h.upsample_nearest2x()?)?,
            };
        }
        Ok(h)
    }
}

/// `UNetMidBlock2D`: resnet, attention (unless `add_attention` is false), resnet, all with
/// `output_scale_factor = mid_block_scale_factor`.
pub struct MidBlock {
    resnets: [ResnetBlock2D; 2],
    attention: Option<AttentionBlock>,
}

impl MidBlock {
    pub fn new(
        b: &mut ParamBuilder,
        channels: usize,
        head_dim: usize,
        attn_groups: Option<usize>,
        add_attention: bool,
        scale: f32,
        s: &BlockSettings,
    ) -> Result<Self> {
        let r0 = ResnetBlock2D::new(b, "mid_block.resnets.0", channels, channels, s, scale)?;
        let attention = if add_attention {
            let (groups, key) = match attn_groups {
                Some(g) => (g, "attn_norm_num_groups"),
                None => (s.groups, "norm_num_groups"),
            };
            Some(AttentionBlock::new(
                b,
                "mid_block.attentions.0",
                channels,
                head_dim,
                groups,
                key,
                s.eps,
                scale,
            )?)
        } else {
            None
        };
        let r1 = ResnetBlock2D::new(b, "mid_block.resnets.1", channels, channels, s, scale)?;
        Ok(MidBlock {
            resnets: [r0, r1],
            attention,
        })
    }

    pub fn forward(&self, h: &Tensor, temb_act: &Tensor, drop: Option<&Dropout>) -> Result<Tensor> {
        let mut h = self.resnets[0].forward(h, temb_act, drop)?;
        if let Some(a) = &self.attention {
            h = a.forward(&h)?;
        }
        self.resnets[1].forward(&h, temb_act, drop)
    }
}
