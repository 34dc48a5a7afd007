"""Multimodal data: the WordNet reader on the installed database, the class-level benchmark on a
tiny image set, and the paper-set loaders on tiny files written here."""

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from semanticfl.data.datasets import DATASETS, ImageDataset
from semanticfl.data.multimodal import WordTokenizer, class_level_benchmark, split_class_text
from semanticfl.data.paper_sets import load_ag_news, load_cifar100, load_coco_captions, load_flickr30k
from semanticfl.data.wordnet import (
    SYSTEM_WORDNET_DIR,
    WordNetNouns,
    class_sentences,
    parse_data_line,
    split_gloss,
)
from semanticfl.errors import UserError

needs_wordnet = pytest.mark.skipif(
    not (SYSTEM_WORDNET_DIR / "data.noun").is_file(), reason="WordNet not installed (apt-get install wordnet-base)"
)
CIFAR10_CLASSES = DATASETS["cifar10"].classes


def test_split_gloss_separates_definition_and_examples():
    definition, examples = split_gloss('a motor vehicle with four wheels; usually propelled; "he needs a car to get to work"')
    assert definition == "a motor vehicle with four wheels; usually propelled"
    assert examples == ("he needs a car to get to work",)


def test_parse_data_line_reads_lemmas_hyponyms_and_gloss():
    line = ("02691156 06 n 03 airplane 0 aeroplane 0 plane 1 003 @ 03510583 n 0000 ~ 02690373 n 0000 "
            '~i 02704645 n 0000 | an aircraft; "the flight was delayed"  ')
    synset = parse_data_line(line)
    assert synset.offset == 2691156
    assert synset.lemmas == ("airplane", "aeroplane", "plane")
    assert synset.hyponyms == (2690373, 2704645)  # '@' is a hypernym, not followed
    assert synset.sentences() == ["airplane, aeroplane, plane: an aircraft", "the flight was delayed"]


@needs_wordnet
def test_wordnet_lookup_and_closure_on_the_installed_database():
    nouns = WordNetNouns()
    assert nouns.lookup("car", 1) == 2958343
    car = nouns.synset(2958343)
    assert car.lemmas[:3] == ("car", "auto", "automobile")
    assert "a motor vehicle with four wheels" in car.definition
    closure = nouns.closure(nouns.lookup("airplane", 1))
    names = {lemma for offset in closure for lemma in nouns.synset(offset).lemmas}
    assert {"airliner", "biplane", "jet"} <= names
    with pytest.raises(UserError, match="senses 1..5"):
        nouns.lookup("car", 9)
    with pytest.raises(UserError, match="not a noun"):
        nouns.lookup("qwertyuiop", 1)


@needs_wordnet
def test_cifar10_class_sentences_are_many_distinct_and_disjoint():
    per_class = class_sentences("cifar10", CIFAR10_CLASSES)
    assert len(per_class) == 10 and min(len(c) for c in per_class) >= 20
    assert "airplane, aeroplane, plane: an aircraft that has a fixed wing and is powered by propellers or jets" in per_class[0]
    assert "the flight was delayed due to trouble with the airplane" in per_class[0]
    every = [s for c in per_class for s in c]
    assert len(every) == len(set(every))  # no sentence in two classes


def test_wordnet_missing_folder_and_unsupported_dataset(tmp_path):
    with pytest.raises(UserError, match="apt-get install wordnet-base"):
        WordNetNouns(tmp_path)
    with pytest.raises(UserError, match="supports: cifar10"):
        class_sentences("mnist", ("0",))


def test_word_tokenizer_ids_by_frequency_then_alphabet():
    tokenizer = WordTokenizer(["the cat", "the dog", "a dog's bone"], max_length=4)
    assert tokenizer.ids == {"the": 2, "a": 3, "bone": 4, "cat": 5, "dog": 6, "dog's": 7}
    torch.testing.assert_close(tokenizer.encode(["The cat ate", "the the the the the"]),
                               torch.tensor([[2, 5, 1, 0], [2, 2, 2, 2]]))
    assert tokenizer.vocab_size == 8


def test_word_tokenizer_decodes_lower_cased_words_without_padding():
    tokenizer = WordTokenizer(["the cat", "the dog", "a dog's bone"], max_length=4)
    tokens = tokenizer.encode(["The CAT ate!", "a dog's bone, the end", ""])
    assert tokenizer.decode(tokens, "[UNK]") == ["the cat [UNK]", "a dog's bone the", ""]


def test_split_class_text_is_disjoint_seeded_and_sized():
    per_class = [[f"c{c} s{i}" for i in range(n)] for c, n in enumerate((10, 30))]
    splits = split_class_text(per_class, public_fraction=0.2, test_fraction=0.1, cap=20, seed=0)
    assert [len(p) for p in splits.public] == [2, 4] and [len(t) for t in splits.test] == [1, 2]
    assert [len(c) for c in splits.client] == [7, 14]  # class 1 capped at 20
    for c in range(2):
        assert not set(splits.public[c]) & set(splits.client[c]) | set(splits.public[c]) & set(splits.test[c])
    assert split_class_text(per_class, 0.2, 0.1, 20, seed=0) == splits
    with pytest.raises(UserError, match="at least 3"):
        split_class_text([["a", "b"]], 0.2, 0.1, 20, 0)


def _tiny_cifar(n_train=40, n_test=20):
    rng = np.random.default_rng(0)
    return ImageDataset(
        spec=DATASETS["cifar10"],
        train_images=rng.integers(0, 255, (n_train, 3, 32, 32), dtype=np.uint8),
        train_labels=np.arange(n_train) % 10,
        test_images=rng.integers(0, 255, (n_test, 3, 32, 32), dtype=np.uint8),
        test_labels=np.arange(n_test) % 10,
        source="tiny",
    )


def test_class_level_benchmark_pairs_every_sample_with_a_sentence_of_its_class():
    dataset = _tiny_cifar()
    text = split_class_text([[f"class{c} word{i}" for i in range(10)] for c in range(10)], 0.2, 0.2, 10, seed=0)
    partitions = [np.arange(0, 10), np.arange(10, 20), np.arange(20, 30)]
    public = np.arange(30, 40)
    bench = class_level_benchmark(dataset, partitions, public, ["image", "text", "pair"], text, seed=0, test_size=10)
    image, sentences, pairs = bench.clients
    assert image.tokens is None and sentences.images is None and pairs.images is not None and pairs.tokens is not None
    torch.testing.assert_close(sentences.labels, torch.arange(10))  # a text client keeps its partition's labels
    words = {i: w for w, i in bench.tokenizer.ids.items()}
    for data, pool in ((sentences, text.client), (pairs, text.client), (bench.public, text.public)):
        for row, label in zip(data.tokens, data.labels):
            assert words[int(row[0])] == f"class{int(label)}"  # the sentence is about the sample's class
            sentence = " ".join(words[int(t)] for t in row if t)
            assert sentence in pool[int(label)]
    torch.testing.assert_close(pairs.images, torch.from_numpy(dataset.train_images[20:30]))
    assert len(bench.test_pairs) == 10 and len(bench.test_text) == 20
    with pytest.raises(UserError, match="server_holdout"):
        class_level_benchmark(dataset, partitions, np.zeros(0, int), ["image"] * 3, text, seed=0)


def test_cifar100_pickles_from_a_user_path(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMANTICFL_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("train", 6), ("test", 4)):
        batch = {b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), b"fine_labels": list(range(n))}
        (folder / name).write_bytes(pickle.dumps(batch))
    dataset = load_cifar100(tmp_path)
    assert dataset.train_images.shape == (6, 3, 32, 32) and list(dataset.test_labels) == [0, 1, 2, 3]
    assert dataset.classes[:2] == ("apple", "aquarium fish")
    with pytest.raises(UserError, match="CIFAR-100 folder not found"):
        load_cifar100(tmp_path / "nowhere")


def test_ag_news_csv(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text('"3","Wall St. Bears","Short-sellers are back."\n"2","Cup final","A late goal \\decides it."\n')
    news = load_ag_news(path)
    assert news.texts == ["Wall St. Bears. Short-sellers are back.", "Cup final. A late goal  decides it."]
    assert list(news.labels) == [2, 1] and news.classes[2] == "Business"
    path.write_text('"7","x","y"\n')
    with pytest.raises(UserError, match="train.csv:1"):
        load_ag_news(path)
    with pytest.raises(UserError, match="AG_NEWS csv not found"):
        load_ag_news(tmp_path / "missing.csv")


def _images(folder, names, size=12):
    folder.mkdir(exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(np.full((size, size + 4, 3), 40 * i, dtype=np.uint8)).save(folder / name)


def test_flickr30k_token_and_csv_captions(tmp_path):
    _images(tmp_path / "images", ["a.jpg", "b.jpg"])
    token = tmp_path / "results.token"
    token.write_text("a.jpg#0\tA dog runs .\na.jpg#1\tA brown dog .\nb.jpg#0\tTwo people sit .\n")
    pairs = load_flickr30k(tmp_path / "images", token, size=8)
    assert pairs.images.shape == (2, 3, 8, 8) and pairs.names == ["a.jpg", "b.jpg"]
    assert pairs.captions == ["A dog runs .", "A brown dog .", "Two people sit ."]
    assert list(pairs.caption_image) == [0, 0, 1]
    assert pairs.images[1].mean() == pytest.approx(40, abs=1)
    table = tmp_path / "results.csv"
    table.write_text("image_name| comment_number| comment\na.jpg| 0| A dog runs .\nb.jpg| 0| Two people sit .\n")
    assert load_flickr30k(tmp_path / "images", table, size=8, limit=1).captions == ["A dog runs ."]
    with pytest.raises(UserError, match="Flickr30k images folder not found"):
        load_flickr30k(tmp_path / "nope", token)
    with pytest.raises(UserError, match="captions file not found"):
        load_flickr30k(tmp_path / "images", tmp_path / "none.token")
    token.write_text("c.jpg#0\tmissing image\n")
    with pytest.raises(UserError, match="image not found"):
        load_flickr30k(tmp_path / "images", token)


def test_coco_captions_subset(tmp_path):
    _images(tmp_path / "train2017", ["1.jpg", "2.jpg", "3.jpg"])
    annotations = {
        "images": [{"id": 7, "file_name": "1.jpg"}, {"id": 8, "file_name": "2.jpg"}, {"id": 9, "file_name": "3.jpg"}],
        "annotations": [{"image_id": 8, "caption": "A cat. "}, {"image_id": 7, "caption": "A bus."},
                        {"image_id": 8, "caption": "A sleeping cat."}, {"image_id": 9, "caption": "Boats."}],
    }
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(annotations))
    subset = load_coco_captions(tmp_path / "train2017", path, size=8, limit=2)
    assert subset.names == ["2.jpg", "1.jpg"]
    assert subset.captions == ["A cat.", "A bus.", "A sleeping cat."] and list(subset.caption_image) == [0, 1, 0]
    path.write_text('{"images": []}')
    with pytest.raises(UserError, match="not a COCO captions file"):
        load_coco_captions(tmp_path / "train2017", path)
    with pytest.raises(UserError, match="COCO captions json not found"):
        load_coco_captions(tmp_path / "train2017", tmp_path / "none.json")
