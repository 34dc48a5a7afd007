"""Stable Diffusion (1.x/2.x, diffusers layout) as a frozen teacher, and a tiny random stand-in for tests.

:func:`load_stable_diffusion` reads a local checkpoint folder (``unet/``, ``vae/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/``) -- or a hub id already in the Hugging Face cache -- and returns the
:class:`~semanticfl.teachers.diffusion.DiffusionTeacher` that extracts FedDifRC's features (ICCV 2025:
one U-Net pass at timestep t, up-block outputs).

:func:`build_tiny_stable_diffusion` writes a complete, randomly initialised checkpoint with the same
classes and layout (a few MB, seconds on a CPU), so the Stable Diffusion code path can be exercised
without the real weights: ``teacher.kind=stable_diffusion teacher.path=DIR``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError

from semanticfl.errors import UserError
from semanticfl.models.text import CLIPPromptEncoder
from semanticfl.teachers.base import ExtractionSettings, TeacherShape
from semanticfl.teachers.codecs import AutoencoderKLCodec
from semanticfl.teachers.diffusion import DiffusionTeacher, resolve_device, resolve_dtype

SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
DIFFUSERS_WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.bin.index.json",
)
TRANSFORMERS_WEIGHTS = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)
COMPONENTS = {
    "unet": ("U-Net", {"config": ("config.json",), "weights": DIFFUSERS_WEIGHTS}),
    "vae": ("VAE", {"config": ("config.json",), "weights": DIFFUSERS_WEIGHTS}),
    "text_encoder": ("text encoder", {"config": ("config.json",), "weights": TRANSFORMERS_WEIGHTS}),
    "tokenizer": (
        "tokenizer",
        {"vocabulary": ("vocab.json", "tokenizer.json"), "merges": ("merges.txt", "tokenizer.json")},
    ),
    "scheduler": ("scheduler", {"config": ("scheduler_config.json",)}),
}
"""Per subfolder: what it holds and the files it needs, each as alternatives (any one will do), in the
names ``from_pretrained`` reads."""
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
CONFIG_SUFFIXES = (".json", ".txt")
LOAD_ERRORS = (OSError, ValueError, RuntimeError, KeyError, SafetensorError)
DOWNLOAD_HINT = (
    "download a SD 1.x/2.x checkpoint in the diffusers layout on a machine with network, e.g. "
    "`huggingface-cli download stable-diffusion-v1-5/stable-diffusion-v1-5 --local-dir DIR`, "
    "and pass teacher.path=DIR"
)
HASH_CHUNK = 1 << 20


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~"))


def _resolve_root(path_or_id: str, allow_download: bool) -> Path:
    """The local checkpoint folder: ``path_or_id`` itself, or the hub id's snapshot in the HF cache
    (downloaded first when ``allow_download``)."""
    local = Path(path_or_id).expanduser()
    if local.exists() or not _looks_like_hub_id(path_or_id):
        if not local.is_dir():
            raise UserError(f"no Stable Diffusion weights at {local} (no such directory); {DOWNLOAD_HINT}")
        return local
    from huggingface_hub import snapshot_download

    try:
        found = snapshot_download(
            path_or_id,
            local_files_only=not allow_download,
            allow_patterns=["model_index.json", *(f"{sub}/*" for sub in SUBFOLDERS)],
            ignore_patterns=["*.ckpt", "*.msgpack", "*.onnx*", "*fp16*", "*.bin"],
        )
    except (OSError, ValueError) as exc:  # not cached, offline, no such repo, bad id, HTTP errors
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        status = "could not be downloaded" if allow_download else "is not in the Hugging Face cache"
        raise UserError(
            f"Stable Diffusion {path_or_id!r} is no directory and {status} ({reason}); {DOWNLOAD_HINT}"
        ) from None
    return Path(found)


def check_complete(root: Path) -> None:
    """Every component a Stable Diffusion folder needs, with its config and weights; the first gap is a
    one-line UserError naming the component and the file (before diffusers reads anything)."""
    for sub, (what, needs) in COMPONENTS.items():
        folder = root / sub
        if not folder.is_dir():
            files = ", ".join(f"{sub}/{names[0]}" for names in needs.values())
            raise UserError(
                f"the Stable Diffusion checkpoint at {root} is incomplete: missing {sub}/ (the {what}: "
                f"{files}); {DOWNLOAD_HINT}"
            )
        for kind, names in needs.items():
            if not any((folder / name).is_file() for name in names):
                raise UserError(
                    f"the Stable Diffusion checkpoint at {root} is incomplete: missing {sub}/{names[0]} "
                    f"(the {what}'s {kind}); {DOWNLOAD_HINT}"
                )


def stable_diffusion_shape(path_or_id: str, allow_download: bool = False) -> TeacherShape:
    """The widths of a Stable Diffusion folder (latent channels, up-block channels, text width) from its
    configs alone: the U-Net and VAE are built on the meta device, so no weight is read or allocated."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig

    root = _resolve_root(str(path_or_id), allow_download)
    check_complete(root)
    try:
        with init_empty_weights():
            unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root, subfolder="unet"))
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(root, subfolder="vae"))
        text = CLIPTextConfig.from_pretrained(root, subfolder="text_encoder", local_files_only=True)
    except LOAD_ERRORS as exc:
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise UserError(
            f"cannot read the configs of the Stable Diffusion checkpoint at {root} ({reason}); it is corrupt: "
            f"{DOWNLOAD_HINT}"
        ) from None
    return TeacherShape.of_unet(unet.config, vae.config.latent_channels, text.hidden_size)


def _public_config(config) -> dict:
    return {key: value for key, value in dict(config).items() if not key.startswith("_")}


def fingerprint_folder(root: Path, configs: dict[str, dict]) -> str:
    """sha256 over the weight and config files of the checkpoint's subfolders (sorted relative paths and
    contents, read in 1 MiB chunks) and the resolved configs of the loaded components."""
    digest = hashlib.sha256()
    files = sorted(
        path
        for sub in SUBFOLDERS
        for path in (root / sub).rglob("*")
        if path.is_file() and path.suffix in WEIGHT_SUFFIXES + CONFIG_SUFFIXES
    )
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with open(path, "rb") as handle:
            while chunk := handle.read(HASH_CHUNK):
                digest.update(chunk)
    digest.update(json.dumps(configs, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def load_stable_diffusion(
    path_or_id: str,
    settings: ExtractionSettings,
    device: str = "cpu",
    allow_download: bool = False,
    dtype: str = "auto",
) -> DiffusionTeacher:
    """A frozen Stable Diffusion teacher from a local diffusers folder or a cached hub id.

    The VAE becomes an :class:`AutoencoderKLCodec`, the CLIP text encoder a :class:`CLIPPromptEncoder`
    (prompts padded to 77 tokens, as SD is conditioned), and the saved scheduler's config is loaded as a
    ``DDIMScheduler`` for ``add_noise``. ``dtype="auto"``: every part in float16 on CUDA, float32 on the
    CPU; diffusers reads the weights straight into the models (``low_cpu_mem_usage``, through
    ``accelerate``), so a full-size U-Net is not held twice. Missing folders and files (checked first:
    :func:`check_complete`) and unreadable files raise :class:`UserError`.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    resolved_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, resolved_device)
    root = _resolve_root(str(path_or_id), allow_download)
    check_complete(root)
    try:
        unet = UNet2DConditionModel.from_pretrained(
            root, subfolder="unet", local_files_only=True, torch_dtype=torch_dtype
        )
        vae = AutoencoderKL.from_pretrained(
            root, subfolder="vae", local_files_only=True, torch_dtype=torch_dtype
        )
        scheduler = DDIMScheduler.from_pretrained(root, subfolder="scheduler", local_files_only=True)
        text = CLIPPromptEncoder.from_directory(root, local_files_only=True)
    except LOAD_ERRORS as exc:
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise UserError(
            f"cannot load the Stable Diffusion checkpoint at {root} ({reason}); it is incomplete or "
            f"corrupt: {DOWNLOAD_HINT}"
        ) from None
    text.model.to(resolved_device, torch_dtype)  # float16 on CUDA, like the U-Net and VAE
    configs = {
        "unet": _public_config(unet.config),
        "vae": _public_config(vae.config),
        "scheduler": _public_config(scheduler.config),
    }
    fingerprint = fingerprint_folder(root, configs)
    return DiffusionTeacher(
        AutoencoderKLCodec(vae), text, unet, scheduler, settings, fingerprint, device=device, dtype=dtype
    )


# --- a tiny random checkpoint with Stable Diffusion's classes and layout -------------------------------

TINY_MERGES = [
    ("t", "h"),
    ("th", "e</w>"),
    ("p", "h"),
    ("ph", "o"),
    ("pho", "t"),
    ("phot", "o</w>"),
    ("o", "f</w>"),
]
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _byte_unicode_chars() -> list[str]:
    """GPT-2/CLIP's reversible map of the 256 byte values to printable unicode characters."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes = dict(zip(printable, printable))
    extra = 256
    for byte in range(256):
        if byte not in codes:
            codes[byte] = extra
            extra += 1
    return [chr(codes[byte]) for byte in range(256)]


def write_tiny_tokenizer(folder: Path) -> int:
    """CLIP's byte-level BPE files (vocab.json, merges.txt, tokenizer_config.json) with a tiny vocabulary:
    every byte character with and without ``</w>``, a few merges, and the two special tokens. Returns
    the vocabulary size. (CLIP's real 49,408-token vocabulary is not on this machine; prompts still pad
    to 77 tokens, so a U-Net pass costs the same.)"""
    chars = _byte_unicode_chars()
    tokens = chars + [c + "</w>" for c in chars] + ["".join(pair) for pair in TINY_MERGES] + [BOS, EOS]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(tokens)}))
    merges = "".join(f"{a} {b}\n" for a, b in TINY_MERGES)
    (folder / "merges.txt").write_text("#version: 0.2\n" + merges, encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": EOS,
        "unk_token": EOS,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return len(tokens)


def _model_index() -> dict:
    import diffusers

    return {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def build_tiny_stable_diffusion(folder: str | Path, seed: int = 0) -> Path:
    """Write a complete, randomly initialised Stable Diffusion checkpoint to ``folder`` and return it.

    Same classes, layout and U-Net block structure as SD 1.x (4 down / 4 up blocks, cross-attention in
    all but the deepest, so the default ``up_blocks=(1, 2, 3)`` are valid; CLIP text encoder; DDIM with
    SD's scaled-linear betas), only with tiny widths, and a VAE that downsamples by 4 (SD: 8) so that
    32×32 images (the default resolution) give 8×8 latents and the deepest U-Net level is not starved.
    It loads with :func:`load_stable_diffusion` (and ``StableDiffusionPipeline``); weights are saved as
    safetensors and depend only on ``seed``. Useful to exercise the Stable Diffusion code path offline
    (tests, CI); its features mean nothing.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    root = Path(folder)
    vocab_size = write_tiny_tokenizer(root / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        UNet2DConditionModel(
            sample_size=16,
            block_out_channels=(32, 32, 64, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=32,
            attention_head_dim=4,
            norm_num_groups=8,
        ).save_pretrained(root / "unet")
        AutoencoderKL(
            block_out_channels=(8, 16, 16),
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=64,
        ).save_pretrained(root / "vae")
        text_config = CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=32,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        CLIPTextModel(text_config).save_pretrained(root / "text_encoder")
    DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    ).save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps(_model_index(), indent=2))
    return root
