"""Tests for semanticfl.data.transforms: exact values, determinism under a generator, reference crops."""

import pytest
import torch
import torch.nn.functional as F

from semanticfl.data.datasets import get_spec
from semanticfl.data.transforms import BatchTransform, normalize, random_crop_flip


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_batch(n: int = 64, channels: int = 3, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=_generator(seed))


def test_normalize_known_values_per_channel():
    images = torch.tensor([0, 255, 51, 102], dtype=torch.uint8).view(1, 1, 2, 2).repeat(1, 2, 1, 1)
    out = normalize(images, mean=(0.5, 0.0), std=(0.25, 2.0))
    assert out.dtype == torch.float32 and out.shape == (1, 2, 2, 2)
    expected_first = torch.tensor([[-2.0, 2.0], [-1.2, -0.4]])
    expected_second = torch.tensor([[0.0, 0.5], [0.1, 0.2]])
    torch.testing.assert_close(out[0, 0], expected_first)
    torch.testing.assert_close(out[0, 1], expected_second)


def test_normalize_rejects_float_input_and_wrong_channel_count():
    with pytest.raises(ValueError, match="uint8"):
        normalize(torch.zeros(1, 3, 2, 2), (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError, match="channels"):
        normalize(torch.zeros(1, 3, 2, 2, dtype=torch.uint8), (0.5,), (0.5,))


def test_random_crop_flip_is_deterministic_and_keeps_shape_and_dtype():
    batch = _random_batch().float()
    first = random_crop_flip(batch, padding=2, flip=True, generator=_generator(7))
    second = random_crop_flip(batch, padding=2, flip=True, generator=_generator(7))
    other = random_crop_flip(batch, padding=2, flip=True, generator=_generator(8))
    assert first.shape == batch.shape and first.dtype == batch.dtype
    assert torch.equal(first, second)
    assert not torch.equal(first, other)
    assert not torch.equal(first, batch)


def test_random_crop_flip_without_padding_or_flip_returns_the_input():
    batch = _random_batch().float()
    assert torch.equal(random_crop_flip(batch, padding=0, flip=False, generator=_generator(0)), batch)


def test_flip_with_centered_crop_is_either_identity_or_torch_flip():
    batch = _random_batch(n=128)
    out = random_crop_flip(batch, padding=0, flip=True, generator=_generator(3))
    mirrored = torch.flip(batch, dims=[-1])
    is_flipped = [torch.equal(out[i], mirrored[i]) for i in range(len(batch))]
    is_kept = [torch.equal(out[i], batch[i]) for i in range(len(batch))]
    assert all(kept or flipped for kept, flipped in zip(is_kept, is_flipped))
    flipped_share = sum(is_flipped) / len(batch)
    assert 0.3 < flipped_share < 0.7
    # The flips are exactly the generator's draws: rand < 0.5, drawn after the (here trivial) offsets.
    generator = _generator(3)
    torch.randint(0, 1, (128,), generator=generator)
    torch.randint(0, 1, (128,), generator=generator)
    expected_flips = (torch.rand(128, generator=generator) < 0.5).tolist()
    assert is_flipped == expected_flips


def test_random_crop_flip_matches_a_per_sample_reference():
    padding, batch = 3, _random_batch(n=40, size=6)
    out = random_crop_flip(batch, padding=padding, flip=True, generator=_generator(11))
    generator = _generator(11)
    rows = torch.randint(0, 2 * padding + 1, (40,), generator=generator)
    cols = torch.randint(0, 2 * padding + 1, (40,), generator=generator)
    flips = torch.rand(40, generator=generator) < 0.5
    padded = F.pad(batch, (padding,) * 4)
    for i in range(len(batch)):
        crop = padded[i, :, rows[i] : rows[i] + 6, cols[i] : cols[i] + 6]
        expected = torch.flip(crop, dims=[-1]) if flips[i] else crop
        assert torch.equal(out[i], expected), f"sample {i}"
    assert len(set(rows.tolist())) == 2 * padding + 1  # every offset was exercised


def test_crop_pads_with_zeros():
    ones = torch.ones(200, 1, 4, 4)
    out = random_crop_flip(ones, padding=2, flip=False, generator=_generator(5))
    zeros_per_sample = (out == 0).flatten(1).sum(1)
    assert zeros_per_sample.max() > 0 and zeros_per_sample.min() == 0
    assert set(out.unique().tolist()) == {0.0, 1.0}


def test_eval_batch_transform_only_normalizes():
    spec = get_spec("cifar10")
    batch = _random_batch(size=32)
    out = BatchTransform(spec, train=False)(batch)
    assert torch.equal(out, normalize(batch, spec.mean, spec.std))


def test_train_batch_transform_follows_the_spec():
    cifar = BatchTransform(get_spec("cifar10"), train=True)
    fashion = BatchTransform(get_spec("fashion_mnist"), train=True)
    assert (cifar.padding, cifar.flip) == (4, True)
    assert (fashion.padding, fashion.flip) == (3, False)
    batch = _random_batch(size=32)
    first, second = cifar(batch, _generator(1)), cifar(batch, _generator(1))
    assert first.dtype == torch.float32 and first.shape == batch.shape
    assert torch.equal(first, second)
    spec = get_spec("cifar10")
    expected = normalize(random_crop_flip(batch, 4, True, _generator(1)), spec.mean, spec.std)
    assert torch.equal(first, expected)
    with pytest.raises(ValueError, match="Generator"):
        cifar(batch)


def test_channels_last_transform_gives_the_same_values_in_nhwc_memory():
    spec = get_spec("cifar10")
    batch = _random_batch(size=32)
    nchw = BatchTransform(spec, train=True)(batch, _generator(4))
    nhwc = BatchTransform(spec, train=True, channels_last=True)(batch, _generator(4))
    assert torch.equal(nchw, nhwc)
    assert nhwc.is_contiguous(memory_format=torch.channels_last) and not nhwc.is_contiguous()
    assert nchw.is_contiguous()
