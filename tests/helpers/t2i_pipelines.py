"""A tiny random diffusers text-to-image pipeline, saved to a directory that loads like a hub snapshot.

Tests pass the directory wherever a hub id goes (`components.t2i.model` of a Paracosm config), so a run goes
through the same `DiffusionPipeline.from_pretrained(dir)` as `Qwen/Qwen-Image`. A StableDiffusionPipeline
with the tiny UNet/VAE/CLIP text encoder of `edit_pipelines.build_tiny_ip2p` (4 latent input channels instead
of 8); weights are random but seeded; an image of 32x32 in 2 steps takes a few hundredths of a second.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.helpers.edit_pipelines import _clip_text_encoder, _clip_tokenizer

TINY_T2I_CALL: dict[str, Any] = {"num_inference_steps": 2, "guidance_scale": 5.0}


def build_tiny_sd(out_dir: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """A random StableDiffusionPipeline (tiny UNet/VAE/CLIP text encoder), ~8 MB."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tok = _clip_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
    )
    pipe: Any = StableDiffusionPipeline(
        vae=vae,
        text_encoder=_clip_text_encoder(tok),
        tokenizer=tok,
        unet=unet,
        scheduler=EulerDiscreteScheduler(steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    out = Path(out_dir)
    pipe.save_pretrained(out)
    return out


__all__ = ["TINY_T2I_CALL", "build_tiny_sd"]
