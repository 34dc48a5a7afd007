"""Tests for semanticfl.models: shapes, exact parameter counts, determinism, state round trip."""

import numpy as np
import pytest
import torch
from torch import nn

from semanticfl.errors import UserError
from semanticfl.models import (
    ClientModel,
    build_model,
    count_parameters,
    load_numpy_state,
    model_names,
    state_to_numpy,
)
from semanticfl.models.mobilenet import MobileNetV2

INPUTS = [(1, 28), (3, 32), (3, 64)]
FEATURE_DIMS = {"cnn": 84, "mobilenet": 1280, "resnet10": 512, "resnet18": 512}
NAMES = list(FEATURE_DIMS)


def seeded(name, num_classes=10, in_channels=3, image_size=32, seed=0):
    torch.manual_seed(seed)
    return build_model(name, num_classes, in_channels, image_size)


def test_model_names():
    assert model_names() == ["cnn", "mobilenet", "resnet10", "resnet18"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("in_channels,size", INPUTS)
def test_output_shapes(name, in_channels, size):
    model = seeded(name, 7, in_channels, size).eval()
    assert isinstance(model, ClientModel)
    assert isinstance(model.classifier, nn.Linear)
    assert model.feature_dim == FEATURE_DIMS[name]
    with torch.no_grad():
        feats, logits = model(torch.randn(4, in_channels, size, size))
    assert feats.shape == (4, FEATURE_DIMS[name])
    assert logits.shape == (4, 7)
    assert model.features(torch.zeros(2, in_channels, size, size)).shape == (2, FEATURE_DIMS[name])


def test_cnn_parameter_counts():
    # 3x32x32: conv1 3*6*25+6=456, conv2 6*16*25+16=2416, fc1 (16*5*5=400)*120+120=48120,
    # fc2 120*84+84=10164, fc3 84*10+10=850 -> 62006
    assert count_parameters(build_model("cnn", 10, 3, 32)) == 62006
    # 1x28x28: conv1 1*6*25+6=156, conv2 2416, fc1 (16*4*4=256)*120+120=30840,
    # fc2 10164, fc3 850 -> 44426
    assert count_parameters(build_model("cnn", 10, 1, 28)) == 44426


def test_resnet_parameter_counts():
    assert count_parameters(build_model("resnet18", 10)) == 11_173_962
    # ResNet-10, 3 channels, 10 classes (convs have no bias, each BN has 2*C parameters):
    # stem   conv 3*64*9=1728 + BN 128                                          = 1856
    # stage1 conv 64*64*9*2=73728 + BN 256                                      = 73984
    # stage2 conv 64*128*9=73728 + 128*128*9=147456 + BN 512 + sc 8192+256      = 230144
    # stage3 conv 128*256*9=294912 + 256*256*9=589824 + BN 1024 + sc 32768+512  = 919040
    # stage4 conv 256*512*9=1179648 + 512*512*9=2359296 + BN 2048 + sc 131072+1024 = 3673088
    # head   512*10+10                                                          = 5130
    # total 1856+73984+230144+919040+3673088+5130                               = 4903242
    assert count_parameters(build_model("resnet10", 10)) == 4_903_242


def test_mobilenet_parameter_counts():
    # MobileNetV2, 3 channels, 10 classes (convs have no bias, each BN has 2*C parameters; an
    # expanding block is 1x1 c->6c, 3x3 depthwise 6c, 1x1 6c->c', each with its BN):
    # stem   conv 3*32*9=864 + BN 64                                                    = 928
    # t=1, c=16   32*9 + 32*16 + BN 64+32                                               = 896
    # c=24 (x2)   5136 + 8832                                                           = 13968
    # c=32 (x3)   10000 + 2*14848                                                       = 39696
    # c=64 (x4)   21056 + 3*54272                                                       = 183872
    # c=96 (x3)   66624 + 2*118272                                                      = 303168
    # c=160 (x3)  155264 + 2*320000                                                     = 795264
    # c=320       960*160 + 960*2 + 960*9 + 960*2 + 960*320 + 320*2                     = 473920
    # last   conv 320*1280=409600 + BN 2560                                             = 412160
    # head   1280*10+10                                                                 = 12810
    # total                                                                             = 2236682
    assert count_parameters(build_model("mobilenet", 10)) == 2_236_682
    # 1 channel: the stem conv loses 2*32*9 = 576
    assert count_parameters(build_model("mobilenet", 10, 1, 28)) == 2_236_106


def test_mobilenet_width_multiplier_keeps_the_last_conv():
    half, wide = MobileNetV2(10, 3, width_mult=0.5), MobileNetV2(10, 3, width_mult=1.4)
    assert (half.feature_dim, wide.feature_dim) == (1280, 1792)  # the paper keeps >= 1280 channels
    assert count_parameters(half) == 700_490
    assert half(torch.zeros(2, 3, 32, 32))[1].shape == (2, 10)


@pytest.mark.parametrize("size,side", [(32, 4), (28, 4), (64, 8), (8, 1)])
def test_mobilenet_cifar_stem_downsamples_8x(size, side):
    model = seeded("mobilenet", image_size=size).eval()
    assert model.body(torch.zeros(1, 3, size, size)).shape == (1, 1280, side, side)


@pytest.mark.parametrize("name", NAMES)
def test_logits_are_classifier_of_features(name):
    model = seeded(name).eval()
    with torch.no_grad():
        feats, logits = model(torch.randn(3, 3, 32, 32))
        assert torch.equal(logits, model.classifier(feats))


@pytest.mark.parametrize("name", NAMES)
def test_construction_is_deterministic(name):
    first, second = state_to_numpy(seeded(name)), state_to_numpy(seeded(name))
    assert list(first) == list(second)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
    other = state_to_numpy(seeded(name, seed=1))
    assert any(not np.array_equal(first[k], other[k]) for k in first)


def test_state_to_numpy_is_full_ordered_copy():
    model = seeded("resnet10")
    arrays = state_to_numpy(model)
    assert list(arrays) == list(model.state_dict())
    assert "stem.1.running_mean" in arrays
    assert arrays["stem.1.num_batches_tracked"].dtype == np.int64
    assert all(isinstance(a, np.ndarray) for a in arrays.values())
    arrays["classifier.bias"][:] = 123.0
    assert not torch.any(model.classifier.bias == 123.0)


@pytest.mark.parametrize("name", NAMES)
def test_numpy_round_trip_gives_identical_outputs(name):
    source = seeded(name, image_size=16, seed=0)
    source.train()
    source(torch.randn(4, 3, 16, 16))  # move BN running stats away from their defaults
    target = seeded(name, image_size=16, seed=1)
    load_numpy_state(target, state_to_numpy(source))
    x = torch.randn(3, 3, 16, 16)
    source.eval()
    target.eval()
    with torch.no_grad():
        for a, b in zip(source(x), target(x)):
            assert torch.equal(a, b)


def test_load_rejects_shape_mismatch_naming_key():
    arrays = state_to_numpy(build_model("cnn", 10))
    with pytest.raises(UserError, match="classifier.weight") as info:
        load_numpy_state(build_model("cnn", 5), arrays)
    assert "\n" not in str(info.value)


def test_load_rejects_missing_and_extra_keys():
    arrays = state_to_numpy(build_model("cnn", 10))
    del arrays["classifier.bias"]
    with pytest.raises(UserError, match="classifier.bias"):
        load_numpy_state(build_model("cnn", 10), arrays)
    arrays = state_to_numpy(build_model("cnn", 10))
    arrays["extra.weight"] = np.zeros(3)
    with pytest.raises(UserError, match="extra.weight"):
        load_numpy_state(build_model("cnn", 10), arrays)


def test_load_casts_averaged_values_to_model_dtypes():
    model = build_model("resnet10", 10)
    arrays = {k: v.astype(np.float64) for k, v in state_to_numpy(model).items()}
    load_numpy_state(model, arrays)
    assert model.stem[1].num_batches_tracked.dtype == torch.int64
    assert model.classifier.weight.dtype == torch.float32


@pytest.mark.parametrize("name", NAMES)
def test_one_sgd_step_reduces_loss(name):
    model = seeded(name, num_classes=10, image_size=16).train()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, 16, 16, generator=gen)
    y = torch.randint(0, 10, (8,), generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loss_fn = nn.CrossEntropyLoss()
    before = loss_fn(model(x)[1], y)
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = loss_fn(model(x)[1], y)
    assert after.item() < before.item() - 1e-3


@pytest.mark.parametrize(
    "args,fragment",
    [
        (("vgg", 10), "unknown model 'vgg'; choose one of: cnn, mobilenet, resnet10, resnet18"),
        (("cnn", 1), "num_classes"),
        (("resnet18", 10, 2), "in_channels"),
        (("resnet10", 10, 3, 7), "image_size"),
        (("cnn", 10, 3, 15), ">= 16"),
        (("mobilenet", 10, 3, 7), ">= 8"),
        (("cnn", 10.0), "num_classes"),
    ],
)
def test_bad_arguments_raise_one_line_user_error(args, fragment):
    with pytest.raises(UserError) as info:
        build_model(*args)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_smallest_sizes_work():
    for name, size in [("cnn", 16), ("mobilenet", 8), ("resnet10", 8), ("resnet18", 8)]:
        _, logits = build_model(name, 3, 1, size).eval()(torch.zeros(2, 1, size, size))
        assert logits.shape == (2, 3)
