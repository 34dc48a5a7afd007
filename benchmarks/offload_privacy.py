"""How much of an image do SemanticFL's offloaded noised latents reveal?

In ``offload`` mode a client sends ``z_t = √ᾱ_t · E(x) + √(1 − ᾱ_t) · ε`` (the teacher's VAE encoder
E, the scheduler's ᾱ_t, fresh noise ε) to the server once. Anyone holding the decoder can look at
``D(z_t)``, and a denoiser could do better, so this measures a *lower bound* on what leaks: PSNR and
SSIM of ``D(z_t)`` and of the best linear rescaling ``D(z_t / √ᾱ_t)`` against the original image, per t.

    python benchmarks/offload_privacy.py [--teacher DIR] [--images 256]

Appends a JSON record to benchmarks/results/teacher.jsonl and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from semanticfl.data.datasets import images_to_tensor, load_image_dataset
from semanticfl.teachers.base import ExtractionSettings
from semanticfl.teachers.offline import load_offline_teacher, shipped_teacher_dir

RESULTS = Path(__file__).parent / "results" / "teacher.jsonl"
TIMESTEPS = (0, 50, 150, 300, 500, 999)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean PSNR (dB) of images in [0, 1]."""
    mse = (a - b).pow(2).flatten(1).mean(dim=1).clamp_min(1e-10)
    return float((10 * torch.log10(1 / mse)).mean())


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM (Wang et al. 2004: 11×11 Gaussian window, σ = 1.5, K1 = 0.01, K2 = 0.03), per channel."""
    coords = torch.arange(11, dtype=torch.float32) - 5
    g = torch.exp(-coords.pow(2) / (2 * 1.5**2))
    window = (g[:, None] * g[None, :] / g.sum() ** 2).expand(a.shape[1], 1, 11, 11)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window, groups=a.shape[1])

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    value = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(value.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default=None, help="offline teacher folder (default: shipped FMNIST one)")
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--images", type=int, default=256)
    args = parser.parse_args()
    folder = Path(args.teacher) if args.teacher else shipped_teacher_dir("fashion_mnist")
    teacher = load_offline_teacher(folder, ExtractionSettings(resolution=32, up_blocks=(0,)))
    dataset = load_image_dataset(args.dataset)
    images = teacher.prepare(images_to_tensor(dataset.test_images, np.arange(args.images)))
    ids = torch.arange(args.images)
    with torch.inference_mode():
        latents = teacher.latents(images, ids)
        rows = []
        for t in TIMESTEPS:
            noisy = latents if t == 0 else teacher.scheduler.add_noise(
                latents, torch.randn(latents.shape, generator=torch.Generator().manual_seed(t)),
                torch.full((len(ids),), t, dtype=torch.long),
            )
            scale = float(teacher.scheduler.alphas_cumprod[t].sqrt())
            decoded = teacher.codec.decode(noisy).clamp(0, 1)
            rescaled = teacher.codec.decode(noisy / scale).clamp(0, 1)
            rows.append({
                "t": t, "sqrt_alpha_bar": round(scale, 4),
                "psnr_db": round(psnr(decoded, images), 2), "ssim": round(ssim(decoded, images), 3),
                "psnr_rescaled_db": round(psnr(rescaled, images), 2), "ssim_rescaled": round(ssim(rescaled, images), 3),
            })
    entry = {"benchmark": "offload_reveal", "time": time.strftime("%Y-%m-%d %H:%M:%S"),
             "dataset": args.dataset, "images": args.images, "rows": rows}
    RESULTS.parent.mkdir(exist_ok=True)
    with open(RESULTS, "a") as handle:
        handle.write(json.dumps(entry) + "\n")
    print("| t | √ᾱ_t | PSNR D(z_t) | SSIM D(z_t) | PSNR D(z_t/√ᾱ_t) | SSIM D(z_t/√ᾱ_t) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['t']} | {r['sqrt_alpha_bar']} | {r['psnr_db']} dB | {r['ssim']} | "
              f"{r['psnr_rescaled_db']} dB | {r['ssim_rescaled']} |")


if __name__ == "__main__":
    main()
