"""Real English sentences about image classes, read from Princeton WordNet 3.0's noun database.

Debian's ``wordnet-base`` installs the database under ``/usr/share/wordnet`` (``index.noun``,
``data.noun``; format: wndb(5WN)). For a class we take its synset (a lemma and sense number,
e.g. ``car`` sense 1 for CIFAR-10's "automobile") and every synset below it through hyponym
pointers (``~`` and instance hyponyms ``~i``); each synset gives one sentence
``"<lemmas>: <definition>"`` and one more per quoted usage example in its gloss. Synsets reached
from two classes are dropped, so no sentence belongs to two classes.
"""

from __future__ import annotations

import os
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from semanticfl.errors import UserError

WORDNET_ENV = "SEMANTICFL_WORDNET"
SYSTEM_WORDNET_DIR = Path("/usr/share/wordnet")
HYPONYM_POINTERS = frozenset({"~", "~i"})

CLASS_SYNSETS: dict[str, dict[str, tuple[str, int]]] = {
    "cifar10": {
        "airplane": ("airplane", 1),
        "automobile": ("car", 1),
        "bird": ("bird", 1),
        "cat": ("cat", 1),
        "deer": ("deer", 1),
        "dog": ("dog", 1),
        "frog": ("frog", 1),
        "horse": ("horse", 1),
        "ship": ("ship", 1),
        "truck": ("truck", 1),
    },
}
"""Per dataset, class name → (WordNet noun lemma, sense number) of the class's synset."""


@dataclass(frozen=True)
class Synset:
    offset: int
    lemmas: tuple[str, ...]
    hyponyms: tuple[int, ...]
    definition: str
    examples: tuple[str, ...]

    def sentences(self) -> list[str]:
        """One sentence from the lemmas and definition, one per usage example."""
        head = ", ".join(lemma.replace("_", " ") for lemma in self.lemmas)
        return [f"{head}: {self.definition}", *self.examples]


def wordnet_dir(folder: str | os.PathLike | None = None) -> Path:
    """``folder``, else ``$SEMANTICFL_WORDNET``, else Debian's ``/usr/share/wordnet``; checked."""
    found = Path(folder or os.environ.get(WORDNET_ENV) or SYSTEM_WORDNET_DIR).expanduser()
    missing = [name for name in ("index.noun", "data.noun") if not (found / name).is_file()]
    if missing:
        raise UserError(
            f"WordNet noun database not found ({', '.join(missing)} missing in {found}); install it with "
            f"`apt-get install wordnet-base` or point ${WORDNET_ENV} at a folder holding index.noun and data.noun"
        )
    return found


class WordNetNouns:
    """Random access to ``data.noun`` by synset offset (the offset is the line's byte position)."""

    def __init__(self, folder: str | os.PathLike | None = None) -> None:
        self.folder = wordnet_dir(folder)
        self._data = (self.folder / "data.noun").read_bytes()
        self._index = _read_index(self.folder / "index.noun")

    def lookup(self, lemma: str, sense: int) -> int:
        """The synset offset of noun ``lemma``'s ``sense``-th sense (1-based)."""
        offsets = self._index.get(lemma.lower())
        if offsets is None:
            raise UserError(f"'{lemma}' is not a noun in the WordNet database at {self.folder}")
        if not 1 <= sense <= len(offsets):
            raise UserError(f"noun '{lemma}' has senses 1..{len(offsets)} in WordNet, not {sense}")
        return offsets[sense - 1]

    def synset(self, offset: int) -> Synset:
        end = self._data.find(b"\n", offset)
        line = self._data[offset : end if end >= 0 else None].decode("utf-8")
        if not line.startswith(f"{offset:08d} "):
            raise UserError(f"{self.folder / 'data.noun'} has no synset at byte offset {offset}; the file is corrupt")
        return parse_data_line(line)

    def closure(self, root: int) -> list[int]:
        """``root`` and every synset below it through hyponym pointers, breadth first."""
        seen, order, queue = {root}, [root], deque([root])
        while queue:
            for child in self.synset(queue.popleft()).hyponyms:
                if child not in seen:
                    seen.add(child)
                    order.append(child)
                    queue.append(child)
        return order


def parse_data_line(line: str) -> Synset:
    """One ``data.noun`` line: ``offset lex_filenum ss_type w_cnt (word lex_id)... p_cnt
    (symbol offset pos source/target)... | gloss`` (w_cnt in hex, p_cnt decimal)."""
    fields, _, gloss = line.partition(" | ")
    tokens = fields.split()
    words = int(tokens[3], 16)
    lemmas = tuple(tokens[4 + 2 * i] for i in range(words))
    position = 4 + 2 * words
    pointers = int(tokens[position])
    hyponyms = []
    for i in range(pointers):
        symbol, target, pos = tokens[position + 1 + 4 * i : position + 4 + 4 * i]
        if symbol in HYPONYM_POINTERS and pos == "n":
            hyponyms.append(int(target))
    definition, examples = split_gloss(gloss.strip())
    return Synset(int(tokens[0]), lemmas, tuple(hyponyms), definition, examples)


def split_gloss(gloss: str) -> tuple[str, tuple[str, ...]]:
    """``'a definition; more; "an example"; "another"'`` → (``'a definition; more'``, the examples)."""
    examples = tuple(e.strip() for e in re.findall(r'"([^"]+)"', gloss) if e.strip())
    definition = re.sub(r'(;\s*)?"[^"]*"', "", gloss).strip(" ;")
    return definition, examples


def _read_index(path: Path) -> dict[str, list[int]]:
    """``index.noun``: ``lemma pos synset_cnt p_cnt (symbol)... sense_cnt tagsense_cnt (offset)...``."""
    index = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith(" "):  # the license header
            continue
        tokens = line.split()
        synsets, pointers = int(tokens[2]), int(tokens[3])
        index[tokens[0]] = [int(t) for t in tokens[6 + pointers : 6 + pointers + synsets]]
    return index


def class_sentences(
    dataset: str, classes: tuple[str, ...], folder: str | os.PathLike | None = None
) -> list[list[str]]:
    """Per class (in ``classes`` order), the distinct sentences of its synset's hyponym closure."""
    table = CLASS_SYNSETS.get(dataset)
    if table is None:
        raise UserError(
            f"no WordNet class text for dataset '{dataset}'; the class-level image-text benchmark "
            f"supports: {', '.join(CLASS_SYNSETS)}"
        )
    nouns = WordNetNouns(folder)
    closures = [nouns.closure(nouns.lookup(*table[name])) for name in classes]
    owners: dict[int, int] = {}
    for label, closure in enumerate(closures):
        for offset in closure:
            owners[offset] = label if owners.get(offset, label) == label else -1
    per_class = []
    for label, closure in enumerate(closures):
        sentences = [s for o in closure if owners[o] == label for s in nouns.synset(o).sentences()]
        per_class.append(list(dict.fromkeys(sentences)))
    return per_class
