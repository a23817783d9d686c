"""A tiny random-weight Stable Diffusion pipeline, built from configs on the spot (no hub, no
download): a 6.6 MB folder that `from_pretrained` loads like any real one. Its images are noise,
but every code path of a real model runs (load, text encoding, denoising, VAE decode, encoding).

    folder = tiny_pipeline_dir()          # built once per test process, then reused

Recipe: ../shared/reference/offline-models.md.
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import string
import tempfile
from pathlib import Path


def build_tiny_pipeline(folder: Path) -> Path:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)  # the same weights every time
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )
    # four VAE blocks: latents 8x smaller than the image, as in real SD (the recipe's two blocks make
    # them 2x smaller, and a 256x256 image then costs ~20 s on a busy 2-core machine instead of ~1 s)
    vae = AutoencoderKL(
        block_out_channels=[32, 32, 32, 32],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=32,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=1000,
        )
    )
    # a hand-written vocabulary: start/end tokens and single letters, with and without </w>
    vocab_dir = folder.parent / f"{folder.name}-vocab"
    vocab_dir.mkdir(parents=True, exist_ok=True)
    tokens = ["<|startoftext|>", "<|endoftext|>"]
    for ch in string.ascii_lowercase + string.digits + ".,!?'-":
        tokens += [ch, ch + "</w>"]
    (vocab_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (vocab_dir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(
        str(vocab_dir / "vocab.json"),
        str(vocab_dir / "merges.txt"),
        model_max_length=77,
        pad_token="<|endoftext|>",
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


@functools.cache
def tiny_pipeline_dir() -> Path:
    """The tiny pipeline folder, built once per process in a temporary directory."""
    root = Path(tempfile.mkdtemp(prefix="infergate-tiny-sd-"))
    atexit.register(shutil.rmtree, root, True)
    return build_tiny_pipeline(root / "tiny-sd")
