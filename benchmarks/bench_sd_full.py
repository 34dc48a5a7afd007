"""Stable Diffusion at full size, random weights: load time, seconds per image of every stage, peak RSS.

No SD weights exist on this machine and nothing is downloaded, so the script builds the real
architectures (diffusers ``UNet2DConditionModel`` and ``AutoencoderKL``, transformers ``CLIPTextModel``)
from the published configs with random weights, saves them as a diffusers folder, and then goes the way a
user with real weights goes: the project's loader (``load_stable_diffusion``), ``layer_dims``/``text_dim``
= ``"auto"`` read from the folder, FedDifRC's and SemanticFL's requests extracted through
``RequestExtractor``, and the guidance sampler. Times per image do not depend on the weights' values.

    python benchmarks/bench_sd_full.py sd15 --images 2 --steps 4
    python benchmarks/bench_sd_full.py sd21 --images 2 --steps 4

Each run appends one JSON record to ``benchmarks/results/sd_full.jsonl``. Stages: ``ndcr`` (FedDifRC's
null-prompt pass at t = 300, blocks 1, 2, 3, plus its PCA fit and transform), ``tdcl`` (the same image under
each of the 10 class prompts: 10 U-Net passes), ``semanticfl`` (SemanticFL's per-sample target at t = 150:
VAE latent + blocks 1, 2, 3), ``sample`` (text-to-image, ``--steps`` DDIM steps with classifier-free
guidance, VAE decode).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import bench_core  # benchmarks/ is on sys.path when run as a script
import numpy as np
import torch

from semanticfl.algorithms import build_algorithm
from semanticfl.algorithms.base import AlgorithmSetup
from semanticfl.data.datasets import images_to_tensor, load_image_dataset
from semanticfl.teachers.base import NULL_PROMPT, ExtractionSettings, class_prompts
from semanticfl.teachers.sampling import Sampler, SamplerSettings
from semanticfl.teachers.sd import load_stable_diffusion, stable_diffusion_shape, write_tiny_tokenizer
from semanticfl.teachers.targets import FUSED, RequestExtractor

RESULTS = Path(__file__).parent / "results" / "sd_full.jsonl"

VAE = {  # AutoencoderKL of SD 1.x and 2.x (the same architecture)
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "scaling_factor": 0.18215,
}
UNET = {  # UNet2DConditionModel of SD 1.x; SD 2.x changes the keys in ARCHITECTURES
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
ARCHITECTURES = {
    "sd15": {  # runwayml/stable-diffusion-v1-5: CLIP ViT-L/14 text encoder
        "unet": {**UNET, "sample_size": 64},
        "text": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                 "num_attention_heads": 12, "projection_dim": 768, "hidden_act": "quick_gelu"},
        "prediction_type": "epsilon",
    },
    "sd21": {  # stabilityai/stable-diffusion-2-1: OpenCLIP ViT-H/14 text encoder (its penultimate layer)
        "unet": {**UNET, "sample_size": 96, "cross_attention_dim": 1024, "attention_head_dim": (5, 10, 20, 20),
                 "use_linear_projection": True},
        "text": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23,
                 "num_attention_heads": 16, "projection_dim": 512, "hidden_act": "gelu"},
        "prediction_type": "v_prediction",
    },
}


def build_folder(name: str, root: Path, seed: int = 0) -> dict[str, int]:
    """Write a randomly initialised full-size SD checkpoint (diffusers layout) to ``root``; parameter counts."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    arch = ARCHITECTURES[name]
    write_tiny_tokenizer(root / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer")
    counts = {}
    torch.manual_seed(seed)
    for part, build in (
        ("unet", lambda: UNet2DConditionModel(**arch["unet"])),
        ("vae", lambda: AutoencoderKL(**VAE, sample_size=8 * arch["unet"]["sample_size"])),
        ("text_encoder", lambda: CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **arch["text"]))),
    ):
        model = build()
        counts[part] = sum(p.numel() for p in model.parameters())
        model.save_pretrained(root / part)
        del model
    DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type=arch["prediction_type"],
    ).save_pretrained(root / "scheduler")
    return counts


def timed(call):
    started = time.perf_counter()
    out = call()
    return out, time.perf_counter() - started


def requests(folder: Path, class_names: tuple[str, ...]):
    """FedDifRC's (TDCL, NDCR) and SemanticFL's local-mode target, with the dims ``auto`` reads from ``folder``."""
    shape = stable_diffusion_shape(str(folder))
    setup = AlgorithmSetup(len(class_names), class_names, num_clients=10, seed=0, teacher_shape=lambda: shape)
    tdcl, ndcr = build_algorithm("feddifrc", {}, setup).teacher_requests().features
    (target,) = build_algorithm("semanticfl", {"mode": "local"}, setup).teacher_requests().features
    return shape, tdcl, ndcr, target


def run(args: argparse.Namespace) -> None:
    cifar = load_image_dataset("cifar10")
    images = images_to_tensor(cifar.test_images, np.arange(args.images))
    ids = torch.arange(args.images)
    prompts = class_prompts(cifar.classes)
    work = Path(tempfile.mkdtemp(prefix=f"sd-full-{args.arch}-", dir=args.workdir))
    try:
        folder = work / "sd"
        counts, build_s = timed(lambda: build_folder(args.arch, folder))
        disk = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        settings = ExtractionSettings(resolution=args.resolution, batch_size=args.batch_size, up_blocks=(0,))
        with bench_core.PeakTreeRSS(os.getpid()) as memory:
            teacher, load_s = timed(lambda: load_stable_diffusion(str(folder), settings, device=args.device))
            shape, tdcl, ndcr, target = requests(folder, tuple(cifar.classes))
            per_image = {}
            ndcr_ex = RequestExtractor(teacher, ndcr)
            raw, seconds = timed(lambda: ndcr_ex.raw(images, ids, [NULL_PROMPT]))
            per_image["ndcr"] = seconds / args.images
            ndcr_ex.reducer.fit_batches(iter([raw]), fitted_on=f"{args.images} images")
            fused = ndcr_ex.reducer.transform(raw)[FUSED]
            tdcl_ex = RequestExtractor(teacher, tdcl)
            _, seconds = timed(lambda: tdcl_ex.teacher.features_per_prompt(images, ids, list(tdcl.prompts)))
            per_image["tdcl"] = seconds / args.images
            target_ex = RequestExtractor(teacher, target)
            target_raw, seconds = timed(lambda: target_ex.raw(images, ids, [NULL_PROMPT]))
            per_image["semanticfl"] = seconds / args.images
            sampler = Sampler(teacher, SamplerSettings(steps=args.steps, guidance_scale=3.0, batch_size=args.images))
            generated, seconds = timed(lambda: sampler.generate(prompts[: args.images], ids))
            per_image["sample"] = seconds / args.images
    finally:
        shutil.rmtree(work, ignore_errors=True)
    channels = {name: tuple(value.shape[1:]) for name, value in {**raw, **target_raw}.items()}
    bench_core.record("sd_full", {
        "arch": args.arch,
        "device": args.device,
        "dtype": str(teacher.dtype),
        "threads": torch.get_num_threads(),
        "images": args.images,
        "resolution": args.resolution,
        "sample_steps": args.steps,
        "parameters": counts,
        "folder_gb": disk / 2**30,
        "build_s": build_s,
        "load_s": load_s,
        "s_per_image": per_image,
        "feature_shapes": {k: list(v) for k, v in channels.items()},
        "feddifrc_layer_dims": list(ndcr.layer_dims),
        "semanticfl_layer_dims": list(target.layer_dims),
        "text_dim": shape.text_dim,
        "ndcr_fused_dim": int(fused.shape[1]),
        "finite": bool(torch.isfinite(fused).all() and all(torch.isfinite(v).all() for v in target_raw.values())
                       and torch.isfinite(generated).all()),
        "generated_shape": list(generated.shape),
        "peak_rss_gb": memory.peak / 2**30,
        "peak_rss_gb_incl_build": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "command": f"python benchmarks/bench_sd_full.py {args.arch} --images {args.images} --steps {args.steps}",
    }, RESULTS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arch", choices=sorted(ARCHITECTURES))
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="sampler steps")
    parser.add_argument("--resolution", type=int, default=224, help="teacher.resolution (cifar10_sd: 224)")
    parser.add_argument("--batch-size", type=int, default=32, help="teacher.batch_size (cifar10_sd: 32)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", default=None, help="where the temporary SD folder is written")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
