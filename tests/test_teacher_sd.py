"""The Stable Diffusion teacher on a tiny random checkpoint: shapes, reproducible noise, prompt handling,
FedDifRC's one-pass up-block extraction, file errors and the weight fingerprint; plus the TAEF2 codec."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import pytest
import torch

from semanticfl.errors import UserError
from semanticfl.teachers import taef2
from semanticfl.teachers.base import NULL_PROMPT, ExtractionSettings, class_prompts
from semanticfl.teachers.codecs import TAEF2Codec
from semanticfl.teachers.diffusion import DiffusionTeacher
from semanticfl.teachers.sd import build_tiny_stable_diffusion, load_stable_diffusion, stable_diffusion_shape
from semanticfl.teachers.taef2 import TAEF2

SETTINGS = ExtractionSettings(resolution=32, timestep=300, up_blocks=(1, 2, 3), batch_size=4, seed=0)
PROMPTS = class_prompts(["cat", "dog", "sports_car"])
UNET_WEIGHTS = Path("unet") / "diffusion_pytorch_model.safetensors"
VAE_WEIGHTS = Path("vae") / "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return build_tiny_stable_diffusion(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="module")
def teacher(checkpoint: Path) -> DiffusionTeacher:
    return load_stable_diffusion(str(checkpoint), SETTINGS)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randint(
        0, 256, (5, 3, 32, 32), generator=torch.Generator().manual_seed(1), dtype=torch.uint8
    )


IDS = torch.arange(10, 15)


def variant(teacher: DiffusionTeacher, **changes) -> DiffusionTeacher:
    """The same frozen modules with other extraction settings."""
    settings = dataclasses.replace(teacher.settings, **changes)
    return DiffusionTeacher(
        teacher.codec, teacher.text, teacher.unet, teacher.scheduler, settings, teacher.fingerprint
    )


def copy_checkpoint(checkpoint: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(checkpoint, tmp_path / "copy"))


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        torch.testing.assert_close(value, b[key], rtol=1e-5, atol=1e-5, msg=key)


def test_shapes_follow_the_unet_config(teacher: DiffusionTeacher, images: torch.Tensor) -> None:
    out = teacher.features(images, IDS, [NULL_PROMPT])
    assert out["latent"].shape == (5, 4, 8, 8)
    widths = list(reversed(teacher.unet.config.block_out_channels))
    for i in SETTINGS.up_blocks:
        assert out[f"up{i}"].shape[:2] == (5, widths[i])
        assert out[f"up{i}"].dtype == torch.float32
    assert teacher.feature_shapes() == {key: tuple(value.shape[1:]) for key, value in out.items()}
    assert teacher.text_embeddings(PROMPTS).shape == (3, teacher.text.dim)
    torch.testing.assert_close(teacher.text_embeddings(PROMPTS).norm(dim=1), torch.ones(3))


def test_prepare_accepts_uint8_grayscale_and_float(teacher: DiffusionTeacher) -> None:
    gray = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    rgb = gray.expand(-1, 3, -1, -1).float() / 255
    prepared = teacher.prepare(gray)
    assert prepared.shape == (2, 3, 32, 32) and prepared.dtype == torch.float32
    torch.testing.assert_close(prepared, teacher.prepare(rgb))
    assert 0 <= prepared.min() and prepared.max() <= 1


def test_same_seed_same_features_other_seed_other_features(
    teacher: DiffusionTeacher, images: torch.Tensor
) -> None:
    first = teacher.features(images, IDS, [NULL_PROMPT])
    assert_same(first, variant(teacher).features(images, IDS, [NULL_PROMPT]))
    other = variant(teacher, seed=1).features(images, IDS, [NULL_PROMPT])
    torch.testing.assert_close(other["latent"], first["latent"])
    assert not torch.allclose(other["up1"], first["up1"])


def test_features_do_not_depend_on_the_batch(teacher: DiffusionTeacher, images: torch.Tensor) -> None:
    batch = teacher.features(images, IDS, [NULL_PROMPT])  # batch_size 4: chunks of 4 and 1
    for k in (0, 4):
        alone = teacher.features(images[k : k + 1], IDS[k : k + 1], [NULL_PROMPT])
        assert_same(alone, {key: value[k : k + 1] for key, value in batch.items()})


def test_posterior_samples_are_per_sample(teacher: DiffusionTeacher, images: torch.Tensor) -> None:
    sampling = variant(teacher, latent_sample=True)
    batch = sampling.latents(images, IDS)
    torch.testing.assert_close(sampling.latents(images[2:3], IDS[2:3]), batch[2:3])
    assert not torch.allclose(batch, teacher.latents(images, IDS))


def test_per_prompt_features_match_single_prompt_features(
    teacher: DiffusionTeacher, images: torch.Tensor
) -> None:
    per_prompt = teacher.features_per_prompt(images, IDS, PROMPTS)  # 15 rows, batch_size 4
    assert per_prompt.keys() == {"up1", "up2", "up3"}
    for p, prompt in enumerate(PROMPTS):
        single = teacher.features(images, IDS, [prompt])
        for key, value in per_prompt.items():
            assert value.shape[:2] == (5, 3)
            torch.testing.assert_close(value[:, p], single[key], rtol=1e-5, atol=1e-5)


def test_injected_encodings_condition_each_image_alone(teacher: DiffusionTeacher, images: torch.Tensor) -> None:
    encodings = torch.randn(5, 84, generator=torch.Generator().manual_seed(2))
    tokens = teacher.condition_tokens(encodings)
    states, mask = teacher.text.tokens([NULL_PROMPT])
    word_norm = states.float().norm(dim=-1)[mask.bool()].mean()
    assert tokens.shape == (5, states.shape[-1])
    torch.testing.assert_close(tokens.norm(dim=1), word_norm.expand(5), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(teacher.condition_tokens(encodings), tokens)  # a fixed, seeded map
    plain = teacher.features_per_prompt(images, IDS, PROMPTS)
    conditioned = teacher.features_per_prompt(images, IDS, PROMPTS, tokens)
    assert not torch.allclose(plain["up3"], conditioned["up3"])
    # image 0's features depend on its own token only: change image 4's encoding, image 0 keeps its rows
    changed = tokens.clone()
    changed[4] = teacher.condition_tokens(torch.randn(1, 84))[0]
    other = teacher.features_per_prompt(images, IDS, PROMPTS, changed)
    torch.testing.assert_close(other["up3"][0], conditioned["up3"][0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(other["up3"][4], conditioned["up3"][4])


def test_offloaded_features_are_the_local_ones_but_for_the_noised_latent(
    teacher: DiffusionTeacher, images: torch.Tensor
) -> None:
    two_draws = variant(teacher, noise_draws=2)
    noised = two_draws.noised_latents(images, IDS)  # what the client sends
    assert noised.shape == (2, 5, *two_draws.latents(images, IDS).shape[1:])
    server = two_draws.features_of_noised(noised, NULL_PROMPT)
    local = two_draws.features(images, IDS, [NULL_PROMPT])
    for key in ("up1", "up2", "up3"):
        torch.testing.assert_close(server[key], local[key], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(server["latent"], noised.mean(dim=0))
    assert not torch.allclose(server["latent"], local["latent"])  # the clean latent stays on the client


def test_more_prompts_than_batch_rows(teacher: DiffusionTeacher, images: torch.Tensor) -> None:
    wide = teacher.features_per_prompt(images[:2], IDS[:2], PROMPTS)
    assert_same(variant(teacher, batch_size=2).features_per_prompt(images[:2], IDS[:2], PROMPTS), wide)


def test_one_prompt_per_image(teacher: DiffusionTeacher, images: torch.Tensor) -> None:
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[0], NULL_PROMPT, PROMPTS[2]]
    mixed = teacher.features(images, IDS, prompts)
    for k in (1, 3):
        single = teacher.features(images[k : k + 1], IDS[k : k + 1], [prompts[k]])
        assert_same(single, {key: value[k : k + 1] for key, value in mixed.items()})


def test_prompt_and_timestep_change_the_features(teacher: DiffusionTeacher, images: torch.Tensor) -> None:
    null = teacher.features(images, IDS, [NULL_PROMPT])
    cat = teacher.features(images, IDS, [PROMPTS[0]])
    later = variant(teacher, timestep=700).features(images, IDS, [NULL_PROMPT])
    for key in ("up1", "up2", "up3"):
        assert not torch.allclose(null[key], cat[key])
        assert not torch.allclose(null[key], later[key])
    torch.testing.assert_close(later["latent"], null["latent"])


def test_noise_draws_are_averaged(teacher: DiffusionTeacher, images: torch.Tensor) -> None:
    averaged = variant(teacher, noise_draws=2).features(images, IDS, [PROMPTS[1]])
    latents = teacher.latents(images, IDS)
    states, mask = teacher.text.tokens([PROMPTS[1]])
    states, mask = states.expand(5, -1, -1), mask.expand(5, -1)
    draws = [teacher.up_block_features(teacher.noised(latents, IDS, k), states, mask) for k in (0, 1)]
    for i in SETTINGS.up_blocks:
        torch.testing.assert_close(averaged[f"up{i}"], (draws[0][i] + draws[1][i]) / 2, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(draws[0][1], draws[1][1])


def test_hooks_are_removed_even_when_the_unet_fails(teacher: DiffusionTeacher, images: torch.Tensor) -> None:
    teacher.features(images[:1], IDS[:1], [NULL_PROMPT])
    noisy = teacher.noised(teacher.latents(images[:1], IDS[:1]), IDS[:1], 0)
    with pytest.raises(RuntimeError):
        teacher.up_block_features(noisy, torch.zeros(1, 77, 5), None)  # wrong context width
    assert all(len(block._forward_hooks) == 0 for block in teacher.unet.up_blocks)


def test_loading_reads_weights_in_place_without_a_warning(checkpoint: Path, caplog) -> None:
    """diffusers loads with ``low_cpu_mem_usage`` (accelerate is installed) and says nothing about it."""
    from diffusers.utils import is_accelerate_available

    assert is_accelerate_available()
    diffusers_logger = logging.getLogger("diffusers")
    diffusers_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING):
            teacher = load_stable_diffusion(str(checkpoint), SETTINGS)
    finally:
        diffusers_logger.removeHandler(caplog.handler)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    parts = (teacher.unet, teacher.codec, teacher.text.model)
    assert all(p.dtype == torch.float32 for part in parts for p in part.parameters())  # the CPU: float32
    assert not teacher.autocast()._enabled


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_teacher_is_float16_under_autocast(checkpoint: Path, images: torch.Tensor) -> None:
    teacher = load_stable_diffusion(str(checkpoint), SETTINGS, device="cuda")
    parts = (teacher.unet, teacher.codec, teacher.text.model)
    assert all(p.dtype == torch.float16 for part in parts for p in part.parameters())
    assert teacher.autocast()._enabled
    out = teacher.features(images, IDS, [NULL_PROMPT])
    cpu = load_stable_diffusion(str(checkpoint), SETTINGS).features(images, IDS, [NULL_PROMPT])
    for key, value in out.items():
        assert value.dtype == torch.float32 and value.device.type == "cpu" and torch.isfinite(value).all()
        torch.testing.assert_close(value, cpu[key], rtol=0.05, atol=0.05, msg=key)


def test_bad_settings_are_user_errors(teacher: DiffusionTeacher) -> None:
    with pytest.raises(UserError, match=r"0\.\.3"):
        variant(teacher, up_blocks=(1, 4))
    with pytest.raises(UserError, match="timestep"):
        variant(teacher, timestep=1000)
    with pytest.raises(UserError, match="multiple of 4"):
        variant(teacher, resolution=30)


def test_missing_checkpoint_is_a_user_error(checkpoint: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError, match=str(missing)):
        load_stable_diffusion(str(missing), SETTINGS)
    with pytest.raises(UserError, match="semanticfl-test/not-cached"):
        load_stable_diffusion("semanticfl-test/not-cached", SETTINGS)


@pytest.mark.parametrize(
    "remove, named",
    [
        ("unet", "missing unet/ (the U-Net: unet/config.json, unet/diffusion_pytorch_model.safetensors)"),
        (str(VAE_WEIGHTS), "missing vae/diffusion_pytorch_model.safetensors (the VAE's weights)"),
        ("vae/config.json", "missing vae/config.json (the VAE's config)"),
        ("text_encoder/model.safetensors", "missing text_encoder/model.safetensors (the text encoder's weights)"),
        ("tokenizer/merges.txt", "missing tokenizer/merges.txt (the tokenizer's merges)"),
        ("scheduler", "missing scheduler/ (the scheduler: scheduler/scheduler_config.json)"),
    ],
)
def test_an_incomplete_checkpoint_names_the_missing_component_and_file(
    checkpoint: Path, tmp_path: Path, remove: str, named: str
) -> None:
    partial = copy_checkpoint(checkpoint, tmp_path)
    path = partial / remove
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    for read in (lambda: load_stable_diffusion(str(partial), SETTINGS), lambda: stable_diffusion_shape(str(partial))):
        with pytest.raises(UserError) as error:
            read()
        message = str(error.value)
        assert f"checkpoint at {partial} is incomplete: {named}; download" in message
        assert "\n" not in message


def test_the_widths_read_from_the_configs_are_those_the_loaded_teacher_extracts(
    checkpoint: Path, teacher: DiffusionTeacher
) -> None:
    """What layer_dims/text_dim = "auto" read without loading weights equals the measured features."""
    shape = stable_diffusion_shape(str(checkpoint))
    every_block = variant(teacher, up_blocks=(0, 1, 2, 3)).feature_shapes()
    layers = ("latent", "up0", "up1", "up2", "up3")
    assert shape.channels(layers, "test") == tuple(every_block[name][0] for name in layers) == (4, 64, 64, 32, 32)
    assert shape.channels(("up-3", "up-1"), "test") == (64, 32)
    assert shape.text_dim == teacher.text_embeddings(PROMPTS).shape[1] == 32


def test_corrupt_weights_are_a_user_error(checkpoint: Path, tmp_path: Path) -> None:
    broken = copy_checkpoint(checkpoint, tmp_path)
    weights = broken / UNET_WEIGHTS
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(UserError, match="corrupt"):
        load_stable_diffusion(str(broken), SETTINGS)


def test_fingerprint_follows_the_weight_bytes(
    teacher: DiffusionTeacher, checkpoint: Path, tmp_path: Path
) -> None:
    moved = copy_checkpoint(checkpoint, tmp_path)
    assert load_stable_diffusion(str(moved), SETTINGS).fingerprint == teacher.fingerprint
    weights = moved / VAE_WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # last byte of the last tensor: the file stays loadable
    weights.write_bytes(bytes(data))
    assert load_stable_diffusion(str(moved), SETTINGS).fingerprint != teacher.fingerprint


def test_autoencoder_kl_codec_round_trip(teacher: DiffusionTeacher, images: torch.Tensor) -> None:
    codec = teacher.codec
    assert (codec.latent_channels, codec.downsample) == (4, 4)
    decoded = codec.decode(codec.encode(teacher.prepare(images)))
    assert decoded.shape == (5, 3, 32, 32)
    assert 0 <= decoded.min() and decoded.max() <= 1


@pytest.fixture(scope="module")
def taef2_model() -> TAEF2:
    if not any(taef2._is_complete(folder) for folder in taef2.candidate_folders()):
        pytest.skip(f"TAEF2 weights not installed (looked in {taef2.candidate_folders()})")
    return TAEF2.from_directory()


def test_taef2_codec_round_trip(taef2_model: TAEF2) -> None:
    ramp = torch.linspace(0, 1, 32)
    images = torch.stack([ramp.expand(32, 32), ramp[:, None].expand(32, 32), torch.full((32, 32), 0.4)])[None]
    codec = TAEF2Codec(taef2_model, scaling_factor=0.5, shift=0.1)
    latents = codec.encode(images)
    assert latents.shape == (1, 32, 4, 4) and (codec.latent_channels, codec.downsample) == (32, 8)
    torch.testing.assert_close(latents, (taef2_model.encode(images) - 0.1) * 0.5)
    torch.testing.assert_close(codec.decode(latents), taef2_model.decode(taef2_model.encode(images)))
    psnr = -10 * torch.log10(((codec.decode(latents) - images) ** 2).mean())
    assert psnr > 20
