"""FedAFD's ``code`` variant on known tensors: each difference from the paper's form (the public code,
Chao2433/FedAFD), the variant's defaults, and D's Adam state kept across rounds and through the client
state's files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from semanticfl.algorithms.base import Algorithm, AlgorithmSetup, LocalSettings, NoParams, load_arrays
from semanticfl.algorithms.fedafd import (
    VARIANTS,
    AdamP,
    AdversarialAlignment,
    Discriminator,
    FedAFD,
    FedAFDParams,
    FedAFDRunSettings,
    GranularityFusion,
    LocalModel,
    LocalTask,
    decayed_lr,
    discriminator_loss,
    distillation_loss,
    encoder_adversarial_loss,
)
from semanticfl.algorithms.fedafd.client import OPTIMIZER_STATE
from semanticfl.algorithms.fedafd.optim import without
from semanticfl.algorithms.multimodal import ClientSpec, MultimodalClientData
from semanticfl.data.multimodal import ModalData, WordTokenizer
from semanticfl.engine.client_state import ClientStateStore
from semanticfl.errors import UserError
from semanticfl.models import state_to_numpy

# --------------------------------------------------------------------------- the variants


def test_paper_is_the_default_and_code_sets_every_difference():
    paper, code = FedAFDParams(), FedAFDParams(variant="code")
    assert {k: getattr(paper, k) for k in VARIANTS["paper"]} == VARIANTS["paper"]
    assert {k: getattr(code, k) for k in VARIANTS["code"]} == VARIANTS["code"]
    assert (code.discriminator_output, code.adversarial_loss, code.discriminator_weight) == ("sigmoid", "nonsaturating", 0.5)
    assert (code.lr_decay_at, code.distill_mse, code.distill_grad_clip) == ((0.5, 0.8), "mean", 2.0)
    assert not code.pair_baa_batchnorm_only  # the code's pair-client bug: only an explicit switch


def test_an_explicit_option_wins_over_its_variant():
    mixed = FedAFDParams(variant="code", distill_mse="sum", adversarial_loss="minimax")
    assert (mixed.distill_mse, mixed.adversarial_loss, mixed.discriminator_output) == ("sum", "minimax", "sigmoid")
    assert FedAFDParams(discriminator_optimizer="adam").discriminator_output == "logit"


@pytest.mark.parametrize(("options", "message"), [
    ({"variant": "official"}, "variant must be one of paper, code"),
    ({"distill_mse": "median"}, "distill_mse must be one of sum, mean"),
    ({"lr_decay_at": (0.5, 1.5)}, "lr_decay_at must hold fractions"),
    ({"discriminator_lr": 0.0}, "discriminator_lr must be > 0"),
])
def test_bad_variant_options_are_one_line_errors(options, message):
    with pytest.raises(UserError, match=message):
        FedAFDParams(**options)


# --------------------------------------------------------------------------- BAA's losses


def test_double_sigmoid_keeps_d_between_one_half_and_sigma_of_one():
    d = Discriminator(4, "sigmoid")
    with torch.no_grad():
        d.net[4].bias.fill_(0.0)
        d.net[4].weight.fill_(0.0)
    assert d.net[-1].__class__ is torch.nn.Sigmoid
    assert d(torch.randn(3, 4)).tolist() == [0.5, 0.5, 0.5]  # z = 0: D's "logit" σ(0), D = σ(½) = 0.6225
    probabilities = torch.sigmoid(torch.sigmoid(torch.tensor([-50.0, 50.0])))
    torch.testing.assert_close(probabilities, torch.tensor([0.5, 1 / (1 + math.exp(-1))]))


@pytest.mark.parametrize(("z", "code", "paper"), [
    # code: −β (1 − σ(σ(z))) σ(z)(1 − σ(z)); paper (minimax on the logit z): −β σ(z); β = 0.5
    (-2.0, -0.024686, -0.059601),
    (0.0, -0.047193, -0.25),
    (2.0, -0.015382, -0.440399),
])
def test_encoder_gradient_of_the_double_sigmoid_form(z, code, paper):
    logit = torch.tensor([z], requires_grad=True)
    encoder_adversarial_loss(torch.sigmoid(logit), beta=0.5, kind="nonsaturating").backward()
    assert logit.grad.item() == pytest.approx(code, abs=1e-6)
    logit.grad = None
    encoder_adversarial_loss(logit, beta=0.5, kind="minimax").backward()
    assert logit.grad.item() == pytest.approx(paper, abs=1e-6)


def test_both_baa_losses_are_halved_in_the_code():
    """The code's D loss (BCE(D(g), 1) + BCE(D(f), 0)) · 0.5 on D(g) = σ(σ(ln 3)): a known value, ½ of
    the weight-1 loss; the encoder's BCE(D(f), 1) · 0.5 = 0.5 · softplus(−σ(z))."""
    g, f = torch.sigmoid(torch.tensor([math.log(3)])), torch.sigmoid(torch.tensor([-math.log(3)]))  # 0.75, 0.25
    full = math.log(1 + math.exp(-0.75)) + math.log(1 + math.exp(0.25))
    assert discriminator_loss(g, f, weight=1.0).item() == pytest.approx(full)
    assert discriminator_loss(g, f, weight=0.5).item() == pytest.approx(0.5 * full)
    assert encoder_adversarial_loss(f, 0.5, "nonsaturating").item() == pytest.approx(0.5 * math.log(1 + math.exp(-0.25)))


# --------------------------------------------------------------------------- GFF and SED


def test_the_codes_second_gate_has_its_own_t1_and_the_first_t2():
    torch.manual_seed(0)
    fusion = GranularityFusion(dim=8, hidden=4, second_gate="code").eval()
    local, global_ = torch.randn(4, 8), torch.randn(4, 8)
    m1 = torch.sigmoid(fusion.t1(local + global_) + fusion.t2(local + global_))
    h = m1 * local + (1 - m1) * global_
    m2 = torch.sigmoid(fusion.t1_second(h) + fusion.t2(h))
    torch.testing.assert_close(fusion(local, global_), m2 * local + (1 - m2) * global_)
    assert not torch.allclose(m2, torch.sigmoid(fusion.t1(h) + fusion.t2(h)))
    assert {k.split(".")[0] for k in fusion.state_dict()} == {"t1", "t2", "t1_second"}  # no unused global_att2
    assert GranularityFusion(dim=8).t1_second is None


def test_mean_mse_is_the_sum_over_dims_divided_by_d():
    features, teacher = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.zeros(2, 2)
    assert distillation_loss(features, teacher, "sum").item() == pytest.approx(2.5)  # (1 + 4) / 2 samples
    assert distillation_loss(features, teacher, "mean").item() == pytest.approx(1.25)  # (1 + 4) / 4 entries
    wide = torch.randn(5, 256)
    assert distillation_loss(wide, 0 * wide, "sum").item() == pytest.approx(256 * distillation_loss(wide, 0 * wide, "mean").item())


# --------------------------------------------------------------------------- lr decay


def test_lr_decays_at_half_and_four_fifths_of_the_rounds():
    forty = [decayed_lr(1.0, r, 40, (0.5, 0.8), 0.1) for r in range(1, 41)]
    assert forty == pytest.approx([1.0] * 20 + [0.1] * 12 + [0.01] * 8)
    six = [decayed_lr(0.05, r, 6, (0.5, 0.8), 0.1) for r in range(1, 7)]
    assert six == pytest.approx([0.05, 0.05, 0.05, 0.005, 0.005, 0.0005])
    assert decayed_lr(0.05, 40, 40, (), 0.1) == 0.05


def test_image_and_text_clients_decay_and_pair_clients_keep_their_lr():
    algorithm = FedAFD(FedAFDParams(variant="code"), AlgorithmSetup(10, tuple("abcdefghij"), 10, 0))
    algorithm.run = FedAFDRunSettings(dataset="cifar10", seed=0, train_fraction=1.0, rounds=10, device="cpu",
                                      server=LocalSettings(1, 4, 0.05, 0.9, 0.0))  # no experiment: only `run` is read
    settings = LocalSettings(epochs=2, batch_size=4, lr=0.05, momentum=0.9, weight_decay=0.0)
    assert algorithm.encoder_settings(settings, 6, "image").lr == pytest.approx(0.005)
    assert algorithm.encoder_settings(settings, 9, "text").lr == pytest.approx(0.0005)
    assert algorithm.encoder_settings(settings, 9, "pair") is settings


# --------------------------------------------------------------------------- D's Adam state across rounds

SENTENCES = ["a cat on a mat", "a dog in a fog", "a red truck", "a blue ship", "a frog", "a deer", "a horse", "a bird"]
DIM = 8


def _text_client(params: FedAFDParams) -> tuple[LocalModel, MultimodalClientData, dict]:
    torch.manual_seed(0)
    tokenizer = WordTokenizer(SENTENCES, max_length=6)
    public = ModalData(torch.arange(8) % 2, tokens=tokenizer.encode(SENTENCES))
    local = LocalModel(ClientSpec("text", "", "bow"), params, 2, tokenizer, (3, 32))
    data = MultimodalClientData(0, ClientSpec("text", "", "bow"), public, public, public, None, None)
    payload = {f"public_{m}": np.random.default_rng(1).normal(size=(8, DIM)).astype(np.float32) for m in ("image", "text")}
    return local, data, payload


SETTINGS = LocalSettings(epochs=1, batch_size=4, lr=0.05, momentum=0.0, weight_decay=0.0)  # stateless encoder SGD
MAKE_OPTIMIZER = Algorithm(NoParams(), AlgorithmSetup(2, ("a", "b"), 1, 0)).make_optimizer


def test_d_adam_state_is_kept_across_two_rounds_and_through_the_client_state_files(tmp_path):
    params = FedAFDParams(variant="code", feature_dim=DIM)
    local, data, payload = _text_client(params)
    first = AdversarialAlignment(local, params, "text", payload, SETTINGS, SETTINGS, {}, make_optimizer=MAKE_OPTIMIZER)
    first.run_pass(data, 4, torch.Generator().manual_seed(1))
    state = {**state_to_numpy(local), **first.state()}
    assert state[OPTIMIZER_STATE + "discriminator.0.step"].tolist() == [2.0]  # 2 batches of 4
    store = ClientStateStore(tmp_path, keep=2)
    store.save(0, 1, state)
    saved = store.load_before(0, 2)
    assert saved.keys() == state.keys()

    resumed, _, _ = _text_client(params)
    load_arrays(resumed, without(saved, OPTIMIZER_STATE))
    second = AdversarialAlignment(resumed, params, "text", payload, SETTINGS, SETTINGS, saved, make_optimizer=MAKE_OPTIMIZER)
    adam = second.d_optimizer.state[resumed.d_intra.net[0].weight]
    assert adam["step"].item() == 2.0
    np.testing.assert_array_equal(adam["exp_avg"].numpy(), state[OPTIMIZER_STATE + "discriminator.0.exp_avg"])
    second.run_pass(data, 4, torch.Generator().manual_seed(2))
    assert second.state()[OPTIMIZER_STATE + "discriminator.0.step"].tolist() == [4.0]

    # the same two passes by one optimiser that never left memory: identical discriminators
    first.run_pass(data, 4, torch.Generator().manual_seed(2))
    for name, value in local.d_intra.state_dict().items():
        assert torch.equal(value, resumed.d_intra.state_dict()[name]), name


class RecordingFactory:
    """A ``make_optimizer`` that records what it was asked for and builds the shared SGD."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[torch.nn.Parameter], LocalSettings]] = []

    def __call__(self, module: torch.nn.Module, settings: LocalSettings) -> torch.optim.Optimizer:
        self.calls.append((list(module.parameters()), settings))
        return MAKE_OPTIMIZER(module, settings)


def _same(parameters: list[torch.nn.Parameter], expected: list[torch.nn.Parameter]) -> bool:
    return len(parameters) == len(expected) and all(a is b for a, b in zip(parameters, expected))


def test_every_sgd_of_a_client_comes_from_make_optimizer():
    """BAA's D (no weight decay) and encoders, and the task's encoders, are the algorithm's
    ``make_optimizer`` of exactly those parameters, in order; only the code's Adams are not."""
    settings = LocalSettings(epochs=1, batch_size=4, lr=0.05, momentum=0.9, weight_decay=1e-5)
    encoder = LocalSettings(epochs=1, batch_size=4, lr=0.005, momentum=0.9, weight_decay=1e-5)
    params = FedAFDParams(feature_dim=DIM)
    local, _, payload = _text_client(params)
    factory = RecordingFactory()
    baa = AdversarialAlignment(local, params, "text", payload, settings, encoder, {}, make_optimizer=factory)
    task = LocalTask(local, params, "text", encoder, make_optimizer=factory)
    (d_params, d_settings), (e_params, e_settings), (t_params, t_settings) = factory.calls
    assert _same(d_params, local.discriminator_parameters()) and d_settings == LocalSettings(1, 4, 0.05, 0.9, 0.0)
    assert _same(e_params, local.encoder_parameters()) and e_settings is encoder
    assert _same(t_params, local.encoder_parameters()) and t_settings is encoder
    for optimizer, lr, decay in ((baa.d_optimizer, 0.05, 0.0), (baa.e_optimizer, 0.005, 1e-5), (task.optimizers[0], 0.005, 1e-5)):
        assert isinstance(optimizer, torch.optim.SGD)
        assert {k: optimizer.defaults[k] for k in ("lr", "momentum", "weight_decay")} == {"lr": lr, "momentum": 0.9, "weight_decay": decay}

    code = FedAFDParams(variant="code", feature_dim=DIM)
    local, _, payload = _text_client(code)
    factory = RecordingFactory()
    baa = AdversarialAlignment(local, code, "text", payload, settings, encoder, {}, make_optimizer=factory)
    task = LocalTask(local, code, "text", encoder, make_optimizer=factory)
    assert [len(p) for p, _ in factory.calls] == [len(local.encoder_parameters()), len(local.encoder_parameters(with_gates=False))]
    assert isinstance(baa.d_optimizer, torch.optim.Adam) and baa.d_optimizer.defaults["lr"] == code.discriminator_lr
    gates = task.optimizers[1]
    assert isinstance(gates, torch.optim.Adam) and _same(gates.param_groups[0]["params"], local.gate_parameters())
    assert (gates.defaults["lr"], gates.defaults["weight_decay"]) == (code.gff_lr, code.gff_weight_decay)


def test_bind_reads_the_config_once_into_run_settings():
    from semanticfl.config import load_config
    from semanticfl.engine.experiment import Experiment

    config = load_config("multimodal_cifar10", ["train.rounds=7", "train.lr=0.02", "algorithm.fedafd.server_epochs=3"])
    run = Experiment(config).algorithm.run
    assert run == FedAFDRunSettings.from_config(config, 3)
    assert (run.dataset, run.seed, run.train_fraction, run.rounds, run.device) == ("cifar10", 0, 0.1, 7, "cpu")
    assert run.server == LocalSettings(3, 64, 0.02, 0.9, 1e-5, "cpu")
    with pytest.raises(AttributeError):
        run.rounds = 8  # frozen


def test_the_paper_keeps_no_optimizer_state():
    params = FedAFDParams(feature_dim=DIM)
    local, data, payload = _text_client(params)
    baa = AdversarialAlignment(local, params, "text", payload, SETTINGS, SETTINGS, {}, make_optimizer=MAKE_OPTIMIZER)
    baa.run_pass(data, 4, torch.Generator().manual_seed(1))
    assert isinstance(baa.d_optimizer, torch.optim.SGD) and baa.state() == {}


# --------------------------------------------------------------------------- AdamP


def test_adamp_drops_the_radial_part_of_a_step_on_a_scale_invariant_weight():
    """w = (1, 0), g = (0.01, 1): cos(w, g) ≈ 0.01 < δ/√2, so Adam's first step (1, 1)·lr loses its
    component along w: AdamP moves w to (1, −lr), Adam to (1 − lr, −lr)."""
    results = {}
    for name, cls in (("adamp", AdamP), ("adam", torch.optim.Adam)):
        weight = torch.nn.Parameter(torch.tensor([[1.0, 0.0]]))
        optimizer = cls([weight], lr=0.1)
        weight.grad = torch.tensor([[0.01, 1.0]])
        optimizer.step()
        results[name] = weight.detach()
    torch.testing.assert_close(results["adamp"], torch.tensor([[1.0, -0.1]]))
    torch.testing.assert_close(results["adam"], torch.tensor([[0.9, -0.1]]))


def test_adamp_is_adam_on_a_vector_and_on_a_weight_its_gradient_is_not_orthogonal_to():
    for shape, grad in (((3,), torch.tensor([0.5, -1.0, 2.0])), ((1, 2), torch.tensor([[1.0, 1.0]]))):
        ours, adam = (torch.nn.Parameter(torch.ones(shape)) for _ in range(2))
        optimizers = AdamP([ours], lr=0.01), torch.optim.Adam([adam], lr=0.01)
        for _ in range(3):
            for parameter, optimizer in zip((ours, adam), optimizers):
                parameter.grad = grad.clone()
                optimizer.step()
        torch.testing.assert_close(ours, adam)


def test_adamp_matches_the_adamp_package():
    reference = pytest.importorskip("adamp")
    torch.manual_seed(0)
    start = [torch.randn(4, 3, 2, 2), torch.randn(4), torch.randn(5, 6)]
    ours = [torch.nn.Parameter(t.clone()) for t in start]
    theirs = [torch.nn.Parameter(t.clone()) for t in start]
    optimizers = AdamP(ours, lr=1e-2, weight_decay=0.1), reference.AdamP(theirs, lr=1e-2, weight_decay=0.1)
    for step in range(5):
        grads = [torch.randn_like(t) for t in start]
        grads[0] = grads[0] - (grads[0] * ours[0]).sum() / ours[0].norm() ** 2 * ours[0].detach()  # orthogonal
        for params, optimizer in zip((ours, theirs), optimizers):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            optimizer.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------- the pair-client bug and fresh gates


def _pair_client(switch: bool) -> tuple[LocalModel, MultimodalClientData, dict, FedAFDParams]:
    params = FedAFDParams(variant="code", feature_dim=DIM, pair_baa_batchnorm_only=switch)
    torch.manual_seed(0)
    tokenizer = WordTokenizer(SENTENCES, max_length=6)
    spec = ClientSpec("pair", "resnet10", "bow")
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    public = ModalData(torch.arange(8) % 2, images=images, tokens=tokenizer.encode(SENTENCES))
    to_float = lambda x, _generator: x.float() / 255
    data = MultimodalClientData(0, spec, public, public, public, to_float, to_float)
    payload = {f"public_{m}": np.random.default_rng(1).normal(size=(8, DIM)).astype(np.float32) for m in ("image", "text")}
    return LocalModel(spec, params, 0, tokenizer, (3, 32)), data, payload, params


@pytest.mark.parametrize("switch", [False, True])
def test_pair_baa_batchnorm_only_moves_nothing_but_batchnorm(switch):
    local, data, payload, params = _pair_client(switch)
    before = {name: p.detach().clone() for name, p in local.named_parameters() if not name.startswith("d_")}
    AdversarialAlignment(local, params, "pair", payload, SETTINGS, SETTINGS, {}, make_optimizer=MAKE_OPTIMIZER).run_pass(data, 4, torch.Generator().manual_seed(1))
    moved = {name for name, p in local.named_parameters() if name in before and not torch.equal(p, before[name])}
    batchnorm = {f"{module_name}.{name}" for module_name, module in local.named_modules()
                 if isinstance(module, torch.nn.BatchNorm2d) for name, _ in module.named_parameters()}
    norms = moved & batchnorm
    assert norms  # BatchNorm's affine parameters get BAA gradients in both cases
    assert (moved == norms) is switch  # with the switch, the convolutions and projections stay where they were
    assert "image_encoder.project.weight" in moved or switch
    assert "text_encoder.mlp.0.weight" in moved or switch


def test_fresh_gates_are_seeded_and_reset_the_batchnorm_statistics():
    local, _, _, _ = _pair_client(False)
    gate = local.fuse_image
    with torch.no_grad():
        gate.t1[1].running_mean.fill_(3.0)
    local.reset_gates(7)
    first = {k: v.clone() for k, v in gate.state_dict().items()}
    assert torch.equal(first["t1.1.running_mean"], torch.zeros(64))
    local.reset_gates(7)
    assert all(torch.equal(v, gate.state_dict()[k]) for k, v in first.items())
    local.reset_gates(8)
    assert not torch.equal(first["t1.0.weight"], gate.t1[0].weight)
