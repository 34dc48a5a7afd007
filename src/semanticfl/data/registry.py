"""The dataset registry: what a model and a data pipeline know about each dataset before seeing any of it."""

from __future__ import annotations

from dataclasses import dataclass

from semanticfl.errors import UserError


@dataclass(frozen=True)
class DatasetSpec:
    """What a model and a data pipeline need to know about a dataset before seeing any of it.

    ``classes`` is empty when the names come from the data (TinyImageNet); ``num_classes`` is then the count of
    the official release, and the loaded dataset's spec carries the names and count found in the data.
    ``augment`` lists the training augmentations that suit the images: "crop" (pad and random-crop) and
    "flip" (random horizontal flip; not for digits or other chiral images).
    """

    name: str
    classes: tuple[str, ...]
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: tuple[str, ...]
    num_classes: int

    def __post_init__(self) -> None:
        if self.classes and len(self.classes) != self.num_classes:
            raise ValueError(f"{self.name}: {len(self.classes)} class names for {self.num_classes} classes")
        if not len(self.mean) == len(self.std) == self.in_channels:
            raise ValueError(f"{self.name}: mean/std need one value per channel ({self.in_channels})")


CIFAR100_CLASSES = tuple(
    name.replace("_", " ")
    for name in (  # noqa: SIM905 (one string reads better than 100 literals)
        "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel "
        "can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur "
        "dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion "
        "lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree "
        "pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea "
        "seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table "
        "tank telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman "
        "worm"
    ).split()
)

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="cifar10",
            classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
            in_channels=3,
            image_size=32,
            mean=(0.4914, 0.4822, 0.4465),
            std=(0.2470, 0.2435, 0.2616),
            augment=("crop", "flip"),
            num_classes=10,
        ),
        DatasetSpec(
            name="cifar100",
            classes=CIFAR100_CLASSES,
            in_channels=3,
            image_size=32,
            mean=(0.5071, 0.4865, 0.4409),
            std=(0.2673, 0.2564, 0.2762),
            augment=("crop", "flip"),
            num_classes=100,
        ),
        DatasetSpec(
            name="tinyimagenet",
            classes=(),
            in_channels=3,
            image_size=64,
            mean=(0.4802, 0.4481, 0.3975),
            std=(0.2770, 0.2691, 0.2821),
            augment=("crop", "flip"),
            num_classes=200,
        ),
        DatasetSpec(
            name="fashion_mnist",
            classes=(
                "T-shirt/top", "trouser", "pullover", "dress", "coat",
                "sandal", "shirt", "sneaker", "bag", "ankle boot",
            ),
            in_channels=1,
            image_size=28,
            mean=(0.2860,),
            std=(0.3530,),
            augment=("crop",),
            num_classes=10,
        ),
        DatasetSpec(
            name="mnist",
            classes=tuple(f"digit {digit}" for digit in range(10)),
            in_channels=1,
            image_size=28,
            mean=(0.1307,),
            std=(0.3081,),
            augment=("crop",),
            num_classes=10,
        ),
    )
}


def dataset_names() -> list[str]:
    """The registered dataset names, in registry order."""
    return list(DATASETS)


def get_spec(name: str) -> DatasetSpec:
    """The registered spec for ``name``; a UserError listing the known names for anything else."""
    try:
        return DATASETS[name]
    except KeyError:
        raise UserError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}") from None
