"""PCA is exact and deterministic; the reducer pools, fuses to unit norm and survives a save/load."""

import math

import pytest
import torch

from semanticfl.errors import UserError
from semanticfl.teachers.reduction import PCA, FeatureReducer, _Reservoir


def _data(n=200, c=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    scales = torch.linspace(3.0, 0.1, c)
    return torch.randn(n, c, generator=generator) * scales + torch.arange(c, dtype=torch.float32)


def _features(n=24, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {
        "up1": torch.randn(n, 16, 4, 4, generator=generator),
        "up2": torch.randn(n, 8, 8, 8, generator=generator) * 3 + 1,
    }


def test_full_rank_pca_round_trips():
    x = _data()
    pca = PCA(12).fit(x)
    torch.testing.assert_close(pca.inverse_transform(pca.transform(x)), x, atol=1e-4, rtol=1e-5)
    assert torch.isclose(pca.explained_variance_ratio.sum(), torch.tensor(1.0))


def test_low_rank_data_is_reconstructed_exactly_from_k_components():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(100, 3, generator=generator) @ torch.randn(3, 10, generator=generator) + 4.0
    pca = PCA(3).fit(x)
    torch.testing.assert_close(pca.inverse_transform(pca.transform(x)), x, atol=1e-4, rtol=1e-5)
    assert torch.isclose(pca.explained_variance_ratio.sum(), torch.tensor(1.0), atol=1e-6)


def test_components_are_orthonormal_sorted_and_sign_fixed():
    pca = PCA(5).fit(_data())
    torch.testing.assert_close(pca.components @ pca.components.T, torch.eye(5), atol=1e-5, rtol=0)
    ratios = pca.explained_variance_ratio
    assert torch.all(ratios[:-1] >= ratios[1:])
    peaks = pca.components.gather(1, pca.components.abs().argmax(1, keepdim=True))
    assert torch.all(peaks > 0)


def test_pca_is_deterministic_including_subsampling():
    x = _data(n=3000)
    first, second = PCA(4, max_fit_rows=500, seed=3).fit(x), PCA(4, max_fit_rows=500, seed=3).fit(x)
    assert torch.equal(first.components, second.components) and torch.equal(first.mean, second.mean)
    assert not torch.equal(first.components, PCA(4).fit(x).components)


def test_too_many_components_is_a_user_error():
    with pytest.raises(UserError, match="needs at least 8 rows and channels"):
        PCA(8).fit(_data(n=5, c=20))
    with pytest.raises(UserError):
        PCA(13).fit(_data(c=12))


def test_reservoir_keeps_a_bounded_uniform_sample_of_the_stream():
    reservoir = _Reservoir(capacity=500, seed=0)
    for start in range(0, 20_000, 700):
        reservoir.add(torch.arange(start, min(start + 700, 20_000), dtype=torch.float32)[:, None])
    rows = reservoir.rows()[:, 0]
    assert len(rows) == 500 and len(rows.unique()) == 500
    assert abs(rows.mean().item() - 10_000) < 1_000  # late rows are as likely as early ones
    assert (rows >= 10_000).float().mean().item() == pytest.approx(0.5, abs=0.1)


def test_batches_below_the_cap_fit_like_one_batch():
    features = _features()
    whole = FeatureReducer({"up1": 4, "up2": 2}).fit(features)
    halves = [{name: x[:12] for name, x in features.items()}, {name: x[12:] for name, x in features.items()}]
    streamed = FeatureReducer({"up1": 4, "up2": 2}).fit_batches(halves)
    assert whole.fingerprint() == streamed.fingerprint()


@pytest.mark.parametrize("mode", ["gap", "spatial_norm"])
def test_shapes_and_unit_norm_fusion(mode):
    features = _features()
    reducer = FeatureReducer({"up1": 6, "up2": 2}, mode).fit(features)
    out = reducer.transform(features)
    assert out["up1"].shape == (24, 6) and out["up2"].shape == (24, 2) and out["fused"].shape == (24, 8)
    assert reducer.dim == 8
    torch.testing.assert_close(out["fused"].norm(dim=1), torch.ones(24))
    for part in (out["fused"][:, :6], out["fused"][:, 6:]):
        torch.testing.assert_close(part.norm(dim=1), torch.full((24,), 1 / math.sqrt(2)))


def test_spatial_norm_by_hand():
    # Pixels (C=2) of sample 0: (6, 2), (4, 2); of sample 1: (8, 2), (2, 2). Mean (5, 2); the only
    # variance is along channel 0, so the component is (1, 0) and the scores are ±1 and ±3.
    x = torch.tensor([[[[1.0, -1.0]], [[0.0, 0.0]]], [[[3.0, -3.0]], [[0.0, 0.0]]]])
    x = x + torch.tensor([5.0, 2.0]).view(1, 2, 1, 1)
    out = FeatureReducer({"up1": 1}, "spatial_norm").fit({"up1": x}).transform({"up1": x})
    torch.testing.assert_close(out["up1"], torch.tensor([[math.sqrt(2)], [math.sqrt(18)]]))


def test_gap_pools_before_pca():
    features = _features()
    reducer = FeatureReducer({"up1": 3}, "gap").fit(features)
    pooled = features["up1"].mean(dim=(2, 3))
    torch.testing.assert_close(reducer.transform(features)["up1"], PCA(3).fit(pooled).transform(pooled))


def test_save_load_round_trip(tmp_path):
    features = _features()
    reducer = FeatureReducer({"latent": 2, "up1": 4}, "gap").fit(
        {"latent": features["up2"], "up1": features["up1"]}, fitted_on="cifar10/abc"
    )
    path = reducer.save(tmp_path / "reducer.safetensors")
    loaded = FeatureReducer.load(path, layer_dims={"latent": 2, "up1": 4}, mode="gap")
    assert loaded.fingerprint() == reducer.fingerprint() and loaded.fitted_on == "cifar10/abc"
    assert list(loaded.layer_dims) == ["latent", "up1"]
    batch = {"latent": features["up2"][:5], "up1": features["up1"][:5]}
    for name, value in reducer.transform(batch).items():
        assert torch.equal(loaded.transform(batch)[name], value)


def test_fingerprint_follows_the_fitted_state():
    first = FeatureReducer({"up1": 4}).fit(_features(seed=0))
    assert first.fingerprint() == FeatureReducer({"up1": 4}).fit(_features(seed=0)).fingerprint()
    assert first.fingerprint() != FeatureReducer({"up1": 4}).fit(_features(seed=1)).fingerprint()
    assert first.fingerprint() != FeatureReducer({"up1": 4}, "gap").fit(_features(seed=0)).fingerprint()


def test_damaged_or_mismatched_files_are_user_errors(tmp_path):
    path = FeatureReducer({"up1": 4}).fit(_features()).save(tmp_path / "r.safetensors")
    with pytest.raises(UserError, match="reduces"):
        FeatureReducer.load(path, layer_dims={"up1": 8})
    with pytest.raises(UserError, match="reduces"):
        FeatureReducer.load(path, mode="gap")
    data = path.read_bytes()
    path.write_bytes(data[:-9])
    with pytest.raises(UserError, match=str(path)):
        FeatureReducer.load(path)
    flipped = bytearray(data)
    flipped[-1] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(UserError, match=str(path)):
        FeatureReducer.load(path)


def test_bad_configuration_and_missing_layers_are_user_errors():
    with pytest.raises(UserError, match="mode"):
        FeatureReducer({"up1": 4}, "max")
    with pytest.raises(UserError, match="fused"):
        FeatureReducer({"fused": 4})
    with pytest.raises(UserError, match="positive integer"):
        FeatureReducer({"up1": 0})
    reducer = FeatureReducer({"up1": 4, "up3": 2}).fit({"up1": _features()["up1"], "up3": _features()["up2"]})
    with pytest.raises(UserError, match="'up3'"):
        reducer.transform({"up1": _features()["up1"]})
    with pytest.raises(UserError, match="channels"):
        reducer.transform({"up1": _features()["up2"], "up3": _features()["up2"]})
