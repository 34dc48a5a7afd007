"""Text-to-image generation with the teachers (teachers/sampling.py) and the server's guidance set
(teachers/guidance.py): seeded, batch-independent, fingerprinted by every sampler setting, rebuilt when
the cache is damaged; bad input is a one-line error."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from helpers import semanticfl

from semanticfl.config import load_config
from semanticfl.engine.experiment import Experiment
from semanticfl.errors import UserError
from semanticfl.teachers.base import GuidanceRequest, class_prompts
from semanticfl.teachers.guidance import balanced_labels, generated_entry, generated_images, guidance_set
from semanticfl.teachers.loading import PREBUILT
from semanticfl.teachers.offline import shipped_teacher_dir
from semanticfl.teachers.sampling import Sampler, SamplerSettings, to_dataset_images
from semanticfl.teachers.sd import build_tiny_stable_diffusion

pytestmark = pytest.mark.usefixtures("fashion_mnist_available")

FAST = SamplerSettings(steps=3, guidance_scale=3.0, batch_size=4)
PROMPTS = ["a photo of a trouser", "a photo of a bag", "a photo of a trouser", "a photo of a sandal"]


@pytest.fixture(scope="module")
def offline_teacher():
    return Experiment(load_config("quickstart", ["algorithm.name=semanticfl"])).teacher_targets.teacher


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return build_tiny_stable_diffusion(tmp_path_factory.mktemp("sd") / "tiny-sd")


def generate(teacher, settings=FAST, prompts=PROMPTS, ids=None):
    ids = torch.arange(len(prompts)) if ids is None else ids
    return Sampler(teacher, settings).generate(list(prompts), ids)


def test_same_seed_same_images_whatever_the_batch(offline_teacher):
    whole = generate(offline_teacher)
    assert whole.shape == (4, 3, 32, 32) and 0 <= whole.min() and whole.max() <= 1
    assert torch.equal(whole, generate(offline_teacher))
    halves = generate(offline_teacher, dataclasses.replace(FAST, batch_size=2))
    torch.testing.assert_close(halves, whole, atol=1e-5, rtol=0)
    alone = generate(offline_teacher, prompts=PROMPTS[2:3], ids=torch.tensor([2]))
    torch.testing.assert_close(alone[0], whole[2], atol=1e-5, rtol=0)


def test_seed_guidance_scale_steps_and_scheduler_change_the_images(offline_teacher):
    base = generate(offline_teacher)
    for change in (
        {"seed": 1},
        {"guidance_scale": 1.0},
        {"guidance_scale": 6.0},
        {"steps": 4},
        {"scheduler": "dpm"},
    ):
        other = generate(offline_teacher, dataclasses.replace(FAST, **change))
        assert (other - base).abs().mean() > 1e-3, change


def test_the_prompt_conditions_the_image(offline_teacher):
    images = generate(
        offline_teacher, prompts=["a photo of a trouser", "a photo of a bag"], ids=torch.tensor([0, 0])
    )
    assert (images[0] - images[1]).abs().mean() > 1e-3  # same noise, other prompt


def test_stable_diffusion_generates_through_the_diffusers_pipeline(tiny_sd):
    from semanticfl.teachers.base import ExtractionSettings
    from semanticfl.teachers.sd import load_stable_diffusion

    teacher = load_stable_diffusion(str(tiny_sd), ExtractionSettings(resolution=32, up_blocks=(0,)))
    first = generate(teacher, dataclasses.replace(FAST, steps=2), prompts=["a photo", "the photo"])
    assert first.shape == (2, 3, 32, 32) and torch.isfinite(first).all()
    assert torch.equal(
        first, generate(teacher, dataclasses.replace(FAST, steps=2), prompts=["a photo", "the photo"])
    )


def test_dataset_images_are_uint8_at_the_datasets_size_and_channels():
    images = torch.linspace(0, 1, 32 * 32).reshape(1, 1, 32, 32).expand(1, 3, 32, 32)
    grey = to_dataset_images(images, channels=1, size=28)
    assert grey.shape == (1, 1, 28, 28) and grey.dtype == np.uint8
    assert grey.min() <= 5 and grey.max() >= 250


def test_bad_sampler_settings_and_a_teacher_without_decoder_are_user_errors(offline_teacher):
    for bad, message in (
        ({"guidance_scale": -1.0}, "guidance_scale"),
        ({"steps": 0}, "sample_steps"),
        ({"scheduler": "x"}, "sampler"),
    ):
        with pytest.raises(UserError, match=message):
            Sampler(offline_teacher, dataclasses.replace(FAST, **bad))
    codec = offline_teacher.codec
    try:
        offline_teacher.codec = torch.nn.Identity()
        with pytest.raises(UserError, match="no decoder"):
            Sampler(offline_teacher, FAST)
    finally:
        offline_teacher.codec = codec


@pytest.fixture
def small_experiment(tmp_path):
    overrides = [
        "algorithm.name=semanticfl",
        "teacher.sample_steps=2",
        "teacher.batch_size=8",
        f"teacher.cache_dir={tmp_path}",
    ]
    return lambda *more: Experiment(load_config("quickstart", [*overrides, *more]))


def test_generated_sets_are_cached_keyed_by_every_sampler_setting_and_rebuilt_when_damaged(small_experiment):
    experiment = small_experiment()
    targets = experiment.teacher_targets
    prompts = tuple(class_prompts(experiment.dataset.classes))
    labels = np.repeat(np.arange(10), 1)
    first = generated_images(targets, prompts, labels)
    assert first.shape == (10, 1, 28, 28) and first.dtype == np.uint8
    entries = lambda: sorted(p.name for p in targets.store.root.iterdir() if len(p.name) == 64)  # noqa: E731
    (key,) = entries()
    assert np.array_equal(generated_images(targets, prompts, labels), first)  # a cache hit
    assert entries() == [key]
    for setting in (
        "teacher.sample_steps=3",
        "teacher.guidance_scale=2.0",
        "teacher.sampler=dpm",
        "teacher.seed=1",
    ):
        other = small_experiment(setting).teacher_targets
        generated_images(other, prompts, labels)
    assert len(entries()) == 5  # every setting its own entry
    damaged = targets.store.root / key / "images.npy"
    damaged.write_bytes(damaged.read_bytes()[:-7])
    rebuilt = small_experiment().teacher_targets
    assert np.array_equal(generated_images(rebuilt, prompts, labels), first)


def test_public_guidance_sets_are_class_balanced_server_images_with_teacher_features(small_experiment):
    experiment = small_experiment()
    prompts = tuple(class_prompts(experiment.dataset.classes))
    features = experiment.algorithm.feature_request("g", ("",))
    public = guidance_set(experiment.teacher_targets, GuidanceRequest("g", 3, prompts, "public", features))
    assert np.bincount(public.labels).tolist() == [3] * 10
    assert public.features.shape == (30, 352) and public.features.dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(public.features.astype(np.float32), axis=1), 1, atol=2e-3)
    server = experiment.teacher_targets.train_images(experiment.holdout_indices).numpy()
    as_rows = {row.tobytes() for row in server}
    assert all(image.tobytes() in as_rows for image in public.images)  # drawn from the server's split
    with pytest.raises(UserError, match="at least 1 image per class"):
        guidance_set(experiment.teacher_targets, GuidanceRequest("g", 0, prompts, "public"))


def test_the_validation_split_leaves_out_the_server_images_clients_receive(small_experiment):
    shared = small_experiment("algorithm.name=datashare", "algorithm.datashare.source=public",
                              "algorithm.datashare.per_class=7")
    sent = shared.teacher_targets.public_class_samples(7, 10).reshape(-1)
    assert len(shared.holdout_indices) == 10_000
    assert len(shared.validation_indices) == 10_000 - 70
    assert np.intersect1d(shared.validation_indices, sent).size == 0
    assert np.array_equal(np.union1d(shared.validation_indices, sent), np.sort(shared.holdout_indices))
    assert len(shared.validation_tensors[1]) == 9_930
    generated = small_experiment("algorithm.name=datashare", "algorithm.datashare.source=generated")
    assert np.array_equal(generated.validation_indices, generated.holdout_indices)  # nothing of it sent


def test_sharing_the_public_split_needs_no_teacher(tmp_path):
    """The ``datashare`` control on real images runs where no teacher ships (CIFAR-10) and none is set."""
    shared = Experiment(load_config("cifar10_cnn", [
        "algorithm.name=datashare", "algorithm.datashare.source=public", "algorithm.datashare.per_class=2",
        "data.server_holdout=10000", f"teacher.cache_dir={tmp_path}"]))
    (request,) = shared.algorithm.teacher_requests().guidance
    sent = guidance_set(shared.teacher_targets, request)
    assert np.bincount(sent.labels).tolist() == [2] * 10 and sent.images.shape == (20, 3, 32, 32)
    assert sent.features is None
    with pytest.raises(UserError, match="no offline teacher ships for dataset 'cifar10'"):
        shared.teacher_targets.teacher  # noqa: B018 -- asking for the teacher itself still says what to do


def test_teacher_sample_writes_images_and_a_grid_and_bad_input_writes_nothing(tmp_path):
    env = {"SEMANTICFL_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "samples"
    done = semanticfl(
        "teacher",
        "sample",
        "quickstart",
        "teacher.sample_steps=2",
        "--per-class",
        "2",
        "--out",
        str(out),
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    saved = np.load(out / "samples.npz")
    assert saved["images"].shape == (20, 1, 28, 28) and np.bincount(saved["labels"]).tolist() == [2] * 10
    assert (out / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (entry,) = (out / "prebuilt").iterdir()  # the same images as a store entry, to ship in a teacher folder
    assert np.array_equal(np.load(entry / "images.npy"), saved["images"])
    for bad in (["teacher.guidance_scale=-1", "--per-class", "2"], ["--per-class", "0"]):
        failed = semanticfl(
            "teacher", "sample", "quickstart", *bad, "--out", str(tmp_path / "bad"), cwd=tmp_path, env=env
        )
        assert failed.returncode == 2 and "Traceback" not in failed.stderr
        assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr
    assert not (tmp_path / "bad").exists()


def test_the_shipped_teacher_carries_the_default_guidance_set_so_nothing_is_generated(tmp_path, monkeypatch):
    """SemanticFL's default (guidance, 100 generated images per class) on the quickstart reads the images
    shipped in the teacher's prebuilt/ folder: if the teacher, a sampler default or the prompts change, this
    fails until they are regenerated (`semanticfl teacher sample quickstart --per-class 100 --out DIR`, then
    DIR/prebuilt copied into teachers/weights/fashion_mnist/)."""
    experiment = Experiment(load_config("quickstart", ["algorithm.name=semanticfl", f"teacher.cache_dir={tmp_path}"]))
    (request,) = experiment.algorithm.teacher_requests().guidance

    def no_sampling(*args, **kwargs):
        raise AssertionError("the shipped guidance set did not match: the sampler ran")

    monkeypatch.setattr(Sampler, "generate", no_sampling)
    entry = generated_entry(experiment.teacher_targets, request.prompts, balanced_labels(10, request.per_class))
    (shipped,) = (shipped_teacher_dir("fashion_mnist") / PREBUILT).iterdir()
    assert entry.key == shipped.name and entry.path == tmp_path / shipped.name  # copied into the cache
    images = np.asarray(entry.arrays["images"])
    assert images.shape == (1000, 1, 28, 28) and np.array_equal(images, np.load(shipped / "images.npy"))
