"""FedAFD's paper benchmark (CIFAR-100 + AG_NEWS + Flickr30k + COCO) on tiny sets built here:
the splits per kind, per-image retrieval relevance, the vocabulary cap, the path parameters'
errors, and one in-process client round and server aggregation."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from semanticfl.algorithms.base import ClientTask
from semanticfl.algorithms.fedafd import PAPER_PATHS
from semanticfl.algorithms.multimodal import class_level_info_nce, pair_recalls, retrieval_recalls
from semanticfl.data.datasets import DATASETS, ImageDataset
from semanticfl.data.multimodal import WordTokenizer
from semanticfl.data.paper_sets import CaptionedImages, LabelledText, PaperSets, paper_benchmark
from semanticfl.data.partition import PartitionSpec
from semanticfl.errors import UserError
from semanticfl.models import state_to_numpy

KINDS = ["image", "image", "text", "pair", "text", "pair", "image"]
N_CIFAR, N_NEWS, N_FLICKR, N_COCO = 60, 24, 12, 10
PUBLIC, SERVER_TEST, FLICKR_TEST = 5, 3, 4


# --------------------------------------------------------------------------- in-memory sets


def _indexed_images(n: int, size: int = 8) -> np.ndarray:
    """Image ``i`` is filled with the value ``i``, so a sample tells which image it is."""
    return np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 3, size, size)).copy()


def _captioned(n: int, captions_per_image: int, word: str) -> CaptionedImages:
    image_of = np.repeat(np.arange(n), captions_per_image)
    return CaptionedImages(
        images=_indexed_images(n),
        captions=[f"{word} image{i} caption{k}" for i in range(n) for k in range(captions_per_image)],
        caption_image=image_of,
        names=[f"{i}.jpg" for i in range(n)],
    )


def _sets() -> PaperSets:
    cifar = ImageDataset(
        spec=DATASETS["cifar100"],
        train_images=_indexed_images(N_CIFAR, 32), train_labels=np.arange(N_CIFAR) % 100,
        test_images=_indexed_images(20, 32), test_labels=np.arange(20), source="tiny",
    )
    classes = ("W", "S", "B", "T")
    news = LabelledText([f"news{i} story" for i in range(N_NEWS)], np.arange(N_NEWS) % 4, classes)
    news_test = LabelledText(["news test"] * 8, np.arange(8) % 4, news.classes)
    return PaperSets(cifar, news, news_test, _captioned(N_FLICKR, 2, "flickr"), _captioned(N_COCO, 3, "coco"))


def _bench(**overrides):
    settings = {"public_pairs": PUBLIC, "server_test_images": SERVER_TEST, "flickr_test_images": FLICKR_TEST,
                "seed": 0, "test_size": 10}
    spec = PartitionSpec(scheme="iid", num_clients=len(KINDS))
    return paper_benchmark(_sets(), KINDS, spec, **{**settings, **overrides})


def _image_ids(data) -> list[int]:
    return data.images[:, 0, 0, 0].tolist()


def _words(bench, data) -> list[str]:
    return bench.tokenizer.decode(data.tokens, "?")


def test_clients_of_each_kind_share_their_set_exactly_once():
    bench = _bench()
    by_kind = {kind: [c for c, k in zip(bench.clients, KINDS) if k == kind]
               for kind in ("image", "text", "pair")}
    images = [i for c in by_kind["image"] for i in _image_ids(c)]
    assert [len(c) for c in by_kind["image"]] == [20, 20, 20] and sorted(images) == list(range(N_CIFAR))
    for client in by_kind["image"]:
        assert client.tokens is None
        torch.testing.assert_close(client.labels, torch.tensor(_image_ids(client)) % 100)  # CIFAR-100 labels
    news = [int(s.split()[0][4:]) for c in by_kind["text"] for s in _words(bench, c)]
    assert [len(c) for c in by_kind["text"]] == [12, 12] and sorted(news) == list(range(N_NEWS))
    assert all(c.images is None for c in by_kind["text"])
    pair_images = [set(c.labels.tolist()) for c in by_kind["pair"]]
    assert [len(s) for s in pair_images] == [4, 4] and not pair_images[0] & pair_images[1]
    assert set().union(*pair_images) == set(range(FLICKR_TEST, N_FLICKR))  # the non-test Flickr images
    for client in by_kind["pair"]:
        assert len(client) == 2 * 4  # every caption of its images is a sample
        assert _image_ids(client) == client.labels.tolist()  # the label is the image's pair id
        for words, image in zip(_words(bench, client), client.labels.tolist()):
            assert words.startswith(f"flickr image{image} caption")
    assert bench.num_classes == {"image": 100, "text": 4} and bench.relevance == "image"


def test_public_server_test_and_flickr_test_splits_are_disjoint():
    bench = _bench()
    assert bench.public.labels.tolist() == list(range(PUBLIC)) == _image_ids(bench.public)
    assert _words(bench, bench.public) == [f"coco image{i} caption0" for i in range(PUBLIC)]  # first captions
    server_test = bench.server_test_pairs
    assert sorted(set(server_test.labels.tolist())) == list(range(PUBLIC, PUBLIC + SERVER_TEST))
    assert len(server_test) == 3 * SERVER_TEST  # all captions of the server's test images
    assert _image_ids(server_test) == server_test.labels.tolist()
    assert sorted(set(bench.test_pairs.labels.tolist())) == list(range(FLICKR_TEST))
    assert len(bench.test_pairs) == 2 * FLICKR_TEST
    pair_clients = {i for c, k in zip(bench.clients, KINDS) if k == "pair" for i in c.labels.tolist()}
    assert not pair_clients & set(range(FLICKR_TEST))
    assert len(bench.test_images) == 10 and len(bench.test_text) == 8


def test_the_vocabulary_comes_from_the_training_side_only():
    bench = _bench()
    words = set(bench.tokenizer.words)
    assert {"caption0", "caption1", "coco", "flickr", "story"} <= words
    assert "image4" in words and "image0" in words  # Flickr train image 4, COCO public image 0
    assert "test" not in words  # AG_NEWS test sentences are not in it
    capped = _bench(max_vocabulary=5)
    assert len(capped.tokenizer.words) == 5 and capped.tokenizer.vocab_size == 7


def test_too_few_coco_or_flickr_images_are_one_line_errors():
    with pytest.raises(UserError, match="fewer than algorithm.fedafd.public_pairs"):
        _bench(public_pairs=N_COCO)
    with pytest.raises(UserError, match="flickr_test_images = 12"):
        _bench(flickr_test_images=N_FLICKR)


def test_pair_ids_make_retrieval_count_only_the_right_image():
    """Images 0, 1 with two captions each; caption 1 of image 0 looks like image 1.

    image→text (each image once): image 0's nearest caption is its own (hit at 1); image 1's
    nearest is caption 1 (image 0's: miss), its second caption 3 (hit at 2): R@1 50, R@2 100.
    text→image over the 2 distinct images: captions 0, 2, 3 find theirs, caption 1 finds image 1:
    R@1 75, R@2 100.
    """
    image = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # one row per pair
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.2, 1.0], [0.1, 1.0]])
    ids = torch.tensor([0, 0, 1, 1])
    result = pair_recalls(image, text, ids, "image", ks=(1, 2))
    expected = {"r1_i2t": 50.0, "r2_i2t": 100.0, "r1_t2i": 75.0, "r2_t2i": 100.0, "rsum": 325.0}
    assert result == pytest.approx(expected)
    # Every pair row as a gallery image would give caption 1 two copies of image 1 at K = 2:
    assert retrieval_recalls(image, text, ids, ids, ks=(2,))["r2_t2i"] == 75.0
    # Class-level relevance is unchanged: every row a query, the labels classes.
    class_level = retrieval_recalls(image, text, ids, ids, ks=(1, 2))
    assert pair_recalls(image, text, ids, "class", ks=(1, 2)) == class_level


def test_info_nce_with_unique_pair_ids_is_the_ordinary_image_text_info_nce():
    torch.manual_seed(0)
    image, text = F.normalize(torch.randn(5, 4), dim=1), F.normalize(torch.randn(5, 4), dim=1)
    logits = image @ text.T / 0.1
    clip = 0.5 * (F.cross_entropy(logits, torch.arange(5)) + F.cross_entropy(logits.T, torch.arange(5)))
    torch.testing.assert_close(class_level_info_nce(image, text, torch.arange(10, 15), 0.1), clip)


def test_the_vocabulary_cap_keeps_the_most_frequent_words():
    sentences = ["the cat", "the dog", "a dog's bone"]
    capped = WordTokenizer(sentences, max_length=4, max_vocabulary=3)
    assert capped.ids == {"the": 2, "a": 3, "bone": 4}  # "the" twice, then ties alphabetically
    torch.testing.assert_close(capped.encode(["the cat bone"]), torch.tensor([[2, 1, 4, 0]]))
    assert capped.vocab_size == 5
    for cap in (0, 6, 100):  # no cap, or one not reached: as before
        assert WordTokenizer(sentences, 4, cap).ids == WordTokenizer(sentences, 4).ids


# --------------------------------------------------------------------------- tiny files and a run's config


def _write_images(folder, names, size=10):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(np.full((size, size + 2, 3), 20 * i, dtype=np.uint8)).save(folder / name)


def write_paper_files(root) -> dict[str, str]:
    """Tiny CIFAR-100 pickles, AG_NEWS csvs, a Flickr30k folder + token file and a COCO folder +
    captions json under ``root``; returns the overrides that point a run at them."""
    rng = np.random.default_rng(0)
    cifar = root / "cifar100" / "cifar-100-python"
    cifar.mkdir(parents=True)
    for name, n in (("train", 60), ("test", 20)):
        data = rng.integers(0, 255, (n, 3072), dtype=np.uint8)
        batch = {b"data": data, b"fine_labels": [i % 100 for i in range(n)]}
        (cifar / name).write_bytes(pickle.dumps(batch))
    for name, n in (("train", 24), ("test", 8)):
        topics = ("world", "sport", "money", "tech")
        rows = "".join(f'"{i % 4 + 1}","Title {i}","Story {i} about {topics[i % 4]}."\n' for i in range(n))
        (root / f"ag_{name}.csv").write_text(rows)
    flickr = [f"f{i}.jpg" for i in range(8)]
    _write_images(root / "flickr", flickr)
    lines = [f"{n}#{k}\tA photo {i} number {k} .\n" for i, n in enumerate(flickr) for k in range(2)]
    (root / "flickr.token").write_text("".join(lines))
    coco = [f"{i:012d}.jpg" for i in range(9)]
    _write_images(root / "coco", coco)
    annotations = {
        "images": [{"id": i, "file_name": n} for i, n in enumerate(coco)],
        "annotations": [{"image_id": i, "caption": f"A scene {i} take {k}."}
                        for i in range(9) for k in range(2)],
    }
    (root / "captions.json").write_text(json.dumps(annotations))
    return {
        "data.root": str(root / "cifar100"),
        "algorithm.fedafd.ag_news_train": str(root / "ag_train.csv"),
        "algorithm.fedafd.ag_news_test": str(root / "ag_test.csv"),
        "algorithm.fedafd.flickr30k_images": str(root / "flickr"),
        "algorithm.fedafd.flickr30k_captions": str(root / "flickr.token"),
        "algorithm.fedafd.coco_images": str(root / "coco"),
        "algorithm.fedafd.coco_annotations": str(root / "captions.json"),
    }


TINY_PAPER = [
    "algorithm.fedafd.benchmark=paper",
    "data.dataset=cifar100",
    "data.train_fraction=1",
    "partition.scheme=iid",
    "partition.num_clients=4",
    'algorithm.fedafd.clients=["image:cnn", "text:bow", "pair:cnn+gru", "pair:cnn+bow"]',
    "algorithm.fedafd.feature_dim=16",
    "algorithm.fedafd.public_pairs=6",
    "algorithm.fedafd.server_test_images=3",
    "algorithm.fedafd.flickr_test_images=2",
    "algorithm.fedafd.test_size=10",
    "train.batch_size=8",
]


def _experiment(paths: dict[str, str], extra=()):
    from semanticfl.config import load_config
    from semanticfl.engine.experiment import Experiment

    overrides = [*TINY_PAPER, *(f"{k}={json.dumps(v)}" for k, v in paths.items()), *extra]
    return Experiment(load_config("multimodal_cifar10", overrides))


@pytest.fixture
def paper_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMANTICFL_CACHE", str(tmp_path / "cache"))
    return write_paper_files(tmp_path)


@pytest.mark.parametrize("name", list(PAPER_PATHS))
def test_a_missing_path_parameter_is_a_one_line_error_naming_it(paper_paths, name):
    with pytest.raises(UserError) as error:
        _ = _experiment({**paper_paths, f"algorithm.fedafd.{name}": ""}).algorithm
    assert f"set algorithm.fedafd.{name}=<path>" in str(error.value) and "\n" not in str(error.value)


def test_a_wrong_path_or_dataset_is_a_one_line_error(paper_paths, tmp_path):
    missing = {**paper_paths, "algorithm.fedafd.coco_annotations": str(tmp_path / "no.json")}
    with pytest.raises(UserError, match=r"algorithm.fedafd.coco_annotations='.*no.json' does not exist"):
        _ = _experiment(missing).algorithm
    with pytest.raises(UserError, match="flickr30k_images=.* is a file, not a folder"):
        a_file = paper_paths["algorithm.fedafd.ag_news_train"]
        _ = _experiment({**paper_paths, "algorithm.fedafd.flickr30k_images": a_file}).algorithm
    with pytest.raises(UserError, match="public_pairs must be >= 1"):
        _ = _experiment(paper_paths, ["algorithm.fedafd.public_pairs=0"]).algorithm
    with pytest.raises(UserError, match="benchmark must be one of class_level, paper"):
        _ = _experiment(paper_paths, ["algorithm.fedafd.benchmark=coco"]).algorithm


def test_the_paper_benchmark_needs_cifar100():
    from semanticfl.config import load_config
    from semanticfl.engine.experiment import Experiment

    config = load_config("multimodal_cifar10", ["algorithm.fedafd.benchmark=paper"])
    with pytest.raises(UserError, match="set data.dataset=cifar100"):
        _ = Experiment(config).algorithm


def test_one_client_round_and_aggregation_on_the_tiny_paper_files(paper_paths):
    experiment = _experiment(paper_paths)
    algorithm = experiment.algorithm
    bench = algorithm.benchmark
    assert [len(c) for c in bench.clients] == [60, 24, 6, 6]  # 3 Flickr train images × 2 captions each
    assert len(bench.public) == 6 and len(bench.server_test_pairs) == 3 * 2 and len(bench.test_pairs) == 2 * 2
    assert algorithm.local_model(0).head.out_features == 100
    assert algorithm.local_model(1).head.out_features == 4
    assert algorithm.local_model(2).head is None
    global_arrays = state_to_numpy(experiment.build_model())
    payload = algorithm.server_payload(global_arrays, 1)
    assert {k: v.shape for k, v in payload.items()} == {"public_image": (6, 16), "public_text": (6, 16)}
    updates = []
    for pid in range(4):
        task = ClientTask(round=1, payload=payload)
        update = algorithm.local_train(
            algorithm._server_model(global_arrays), algorithm.client_data(pid), task,
            experiment.local_settings(), experiment.client_generator(1, pid),
        )
        update.client_id = pid
        updates.append(update)
        assert update.arrays == {} and task.state  # no weights uploaded; the client keeps its model
    both = ["public_image", "public_text"]
    assert [sorted(u.extra) for u in updates] == [["public_image"], ["public_text"], both, both]
    assert all(a.shape == (6, 16) and a.dtype == np.float32 for u in updates for a in u.extra.values())
    assert "test_top1" in updates[0].metrics and "test_top1" in updates[1].metrics
    assert "test_rsum" in updates[2].metrics and "test_rsum" in updates[3].metrics
    new = algorithm.aggregate(global_arrays, updates, 1)
    assert new.keys() == global_arrays.keys()
    result = algorithm.central_evaluation(algorithm._server_model(new))
    assert 0 <= result["server_rsum"] <= 600
    means = set(algorithm.round_metrics(updates))
    assert means >= {"client_image_top1", "client_text_top1", "client_pair_rsum"}


def test_the_shipped_fedafd_paper_config_has_the_papers_setting_and_binds_on_the_files(paper_paths):
    """``semanticfl run fedafd_paper`` + the paths: 3 image, 3 text, 4 image-text clients, all every
    round, 40 rounds × 5 local epochs, Dirichlet α = 0.1, β = 0.5, γ = 0.4, 10,000 public pairs."""
    from semanticfl.config import load_config
    from semanticfl.engine.experiment import Experiment

    config = load_config("fedafd_paper")
    assert (config.train.rounds, config.train.local_epochs, config.train.fraction_fit) == (40, 5, 1.0)
    assert (config.partition.scheme, config.partition.alpha, config.data.dataset) == ("dirichlet", 0.1, "cifar100")
    # The tiny files hold a few samples: shrink the sets and the clients, keep the architectures.
    small = ["partition.scheme=iid", "partition.num_clients=4", "algorithm.fedafd.public_pairs=6",
             "algorithm.fedafd.server_test_images=3", "algorithm.fedafd.flickr_test_images=2",
             'algorithm.fedafd.clients=["image:resnet18", "text:gru", "pair:resnet18+gru", "pair:resnet18+gru"]']
    overrides = [*(f"{k}={json.dumps(v)}" for k, v in paper_paths.items()), *small]
    algorithm = Experiment(load_config("fedafd_paper", overrides)).algorithm
    assert (algorithm.params.beta, algorithm.params.gamma, algorithm.params.benchmark) == (0.5, 0.4, "paper")
    assert algorithm.local_model(0).head.out_features == 100 and algorithm.local_model(1).head.out_features == 4
    assert [len(c) for c in algorithm.benchmark.clients] == [60, 24, 6, 6]
