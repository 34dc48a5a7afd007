"""FedAFD's parts on known tensors: SED weights, GFF's gate, BAA's losses, the retrieval loss and
metrics, and the client layout's validation."""

import math

import pytest
import torch

from semanticfl.algorithms.fedafd import (
    GranularityFusion,
    creamfl_weights,
    discriminator_loss,
    encoder_adversarial_loss,
    ensemble,
    sed_weights,
)
from semanticfl.algorithms.multimodal import (
    ClientSpec,
    class_level_info_nce,
    parse_client_spec,
    retrieval_recalls,
)
from semanticfl.errors import UserError

SIGMOID_1 = 1 / (1 + math.exp(-1))  # 0.7311


def test_sed_weights_favour_the_client_whose_feature_finds_its_sample():
    """Client A's features equal the global ones, B's are swapped. For A, sample k's similarities
    to (g_0, g_1) are (1, 0) at the true index: s_A = 1 − log(e + 1); for B, s_B = 0 − log(1 + e);
    w_A = e^{s_A} / (e^{s_A} + e^{s_B}) = σ(1) = 0.7311 for both samples."""
    global_features = torch.eye(2)
    clients = torch.stack([torch.eye(2), torch.eye(2).flip(0)])
    weights = sed_weights(clients, global_features)
    torch.testing.assert_close(weights, torch.tensor([[SIGMOID_1, SIGMOID_1], [1 - SIGMOID_1, 1 - SIGMOID_1]]))
    teacher = ensemble(clients, weights)
    torch.testing.assert_close(teacher, torch.tensor([[SIGMOID_1, 1 - SIGMOID_1], [1 - SIGMOID_1, SIGMOID_1]]))


def test_sed_weights_with_a_temperature_and_equal_clients():
    global_features = torch.eye(2)
    clients = torch.stack([torch.eye(2), torch.eye(2).flip(0)])
    sharp = sed_weights(clients, global_features, temperature=0.5)
    torch.testing.assert_close(sharp[0], torch.full((2,), 1 / (1 + math.exp(-2))))  # σ(1/τ)
    same = sed_weights(torch.stack([torch.eye(2), torch.eye(2)]), global_features)
    torch.testing.assert_close(same, torch.full((2, 2), 0.5))
    assert torch.allclose(sed_weights(torch.randn(3, 5, 4), torch.randn(5, 4)).sum(0), torch.ones(5))


def test_creamfl_weights_score_against_the_other_modality():
    """A client's image features matching the global *text* features of the same pairs get σ(1)."""
    text_global = torch.eye(2)
    images = torch.stack([torch.eye(2), torch.eye(2).flip(0)])
    torch.testing.assert_close(creamfl_weights(images, text_global)[0], torch.full((2,), SIGMOID_1))


def _gff_with_gate_bias(bias: float) -> GranularityFusion:
    torch.manual_seed(0)
    fusion = GranularityFusion(dim=8, hidden=4).eval()
    with torch.no_grad():
        fusion.t1[-1].bias.fill_(bias)  # the last BatchNorm's shift: M(x) = σ(bias + ...)
        fusion.t2[-1].bias.fill_(bias)
    return fusion


def test_gff_output_shape_and_its_two_limits():
    local, global_ = torch.randn(5, 8), torch.randn(5, 8)
    assert _gff_with_gate_bias(0.0)(local, global_).shape == (5, 8)
    torch.testing.assert_close(_gff_with_gate_bias(50.0)(local, global_), local)  # gate → 1: the local feature
    torch.testing.assert_close(_gff_with_gate_bias(-50.0)(local, global_), global_)  # gate → 0: the global one


def test_gff_is_the_two_stage_formula():
    fusion = _gff_with_gate_bias(0.3)
    local, global_ = torch.randn(4, 8), torch.randn(4, 8)
    m1 = fusion.gate(local + global_)
    h = m1 * local + (1 - m1) * global_
    m2 = fusion.gate(h)
    torch.testing.assert_close(fusion(local, global_), m2 * local + (1 - m2) * global_)
    assert ((m1 > 0) & (m1 < 1)).all()


def test_discriminator_and_encoder_losses_on_known_logits():
    zeros = torch.zeros(4)
    assert discriminator_loss(zeros, zeros).item() == pytest.approx(2 * math.log(2))  # D = ½ everywhere
    assert encoder_adversarial_loss(zeros, beta=0.5).item() == pytest.approx(-0.5 * math.log(2))
    # D(g) = 0.75, D(f) = 0.25: −[log 0.75 + log 0.75] and β·log(1 − 0.25)
    real, fake = torch.full((3,), math.log(3)), torch.full((3,), -math.log(3))
    assert discriminator_loss(real, fake).item() == pytest.approx(-2 * math.log(0.75))
    assert encoder_adversarial_loss(fake, beta=0.5).item() == pytest.approx(0.5 * math.log(0.75))


def test_encoder_loss_gradient_pushes_the_local_feature_to_look_global():
    logit = torch.zeros(1, requires_grad=True)
    encoder_adversarial_loss(logit, beta=0.5).backward()
    assert logit.grad.item() == pytest.approx(-0.25)  # d/da [−β softplus(a)] = −β σ(a); descent raises D(f)


def test_nonsaturating_encoder_loss_on_known_logits_and_its_gradient_fading_once_d_is_fooled():
    # D(f) = 0.25: β·(−log 0.25); D(f) = 0.75: β·(−log 0.75)
    fake, fooled = torch.full((3,), -math.log(3)), torch.full((3,), math.log(3))
    assert encoder_adversarial_loss(fake, 0.5, "nonsaturating").item() == pytest.approx(-0.5 * math.log(0.25))
    assert encoder_adversarial_loss(fooled, 0.5, "nonsaturating").item() == pytest.approx(-0.5 * math.log(0.75))
    grads = {}
    for kind in ("minimax", "nonsaturating"):
        logit = torch.full((1,), math.log(3), requires_grad=True)  # D(f) = 0.75: D is fooled
        encoder_adversarial_loss(logit, 0.5, kind).backward()
        grads[kind] = logit.grad.item()
    # both raise D(f); minimax by β·D(f) = 0.375 there, non-saturating by β·(1 − D(f)) = 0.125
    assert grads == pytest.approx({"minimax": -0.375, "nonsaturating": -0.125})


def test_class_level_info_nce_on_known_features():
    """Two classes, I = T = identity, τ = 1: each row's CE is −log(e / (e + 1)) = log(1 + e⁻¹)."""
    loss = class_level_info_nce(torch.eye(2), torch.eye(2), torch.tensor([0, 1]), temperature=1.0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)))
    # Same class twice: both texts are positives with weight ½ each; logits (1, 0) per row.
    same = class_level_info_nce(torch.eye(2), torch.eye(2), torch.tensor([3, 3]), temperature=1.0)
    assert same.item() == pytest.approx(math.log(1 + math.e) - 0.5)


def test_retrieval_recalls_are_class_level():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    text = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    image_labels, text_labels = torch.tensor([0, 1, 1]), torch.tensor([1, 0])
    result = retrieval_recalls(image, text, image_labels, text_labels, ks=(1, 2))
    # image 0 → text 1 (class 0) hit; image 1 → text 0 (class 1) hit; image 2 → text 1 (class 0) miss
    assert result["r1_i2t"] == pytest.approx(200 / 3)
    assert result["r2_i2t"] == 100.0
    # text 0 (class 1) → image 1 hit; text 1 (class 0) → image 0 hit
    assert result["r1_t2i"] == 100.0
    assert result["rsum"] == pytest.approx(200 / 3 + 300)


def test_client_specs_parse_and_reject_bad_entries():
    assert parse_client_spec("image:cnn", "x") == ClientSpec("image", "cnn", "")
    assert parse_client_spec("text:bow", "x") == ClientSpec("text", "", "bow")
    assert parse_client_spec("pair:resnet10+gru", "x") == ClientSpec("pair", "resnet10", "gru")
    assert parse_client_spec("image:mobilenet", "x") == ClientSpec("image", "mobilenet", "")
    assert parse_client_spec("text:minilm", "x") == ClientSpec("text", "", "minilm")
    assert parse_client_spec("pair:cnn+minilm", "x") == ClientSpec("pair", "cnn", "minilm")
    for bad, message in [("audio:cnn", "write"), ("pair:cnn", "write"), ("image:vit", "unknown image"),
                         ("text:bert", "unknown text"), ("image", "write")]:
        with pytest.raises(UserError, match=message):
            parse_client_spec(bad, "algorithm.fedafd.clients[0]")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("partition.num_clients=4", "lists 10 clients but partition.num_clients is 4"),
        ("data.server_holdout=0", "data.server_holdout > 0"),
        ("eval.federated=true", "eval.federated=false"),
        ("algorithm.fedafd.aggregation=max", "aggregation must be one of sed, mean, creamfl"),
        ("algorithm.fedafd.gamma=-1", "gamma must be >= 0"),
        ("algorithm.fedafd.text_test_fraction=0.6", "text_test_fraction must be in"),
        ("algorithm.fedafd.server_text=bert", "unknown text architecture 'bert'"),
        ('algorithm.fedafd.clients=["image:cnn", "video:x"]', "clients lists 2 clients"),
    ],
)
def test_bad_fedafd_settings_are_one_line_errors(override, message):
    from semanticfl.config import load_config
    from semanticfl.engine.experiment import Experiment

    config = load_config("multimodal_cifar10", [override])
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        _ = Experiment(config).algorithm
