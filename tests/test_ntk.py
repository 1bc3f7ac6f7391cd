"""fslib.ntk, fslib.ntk_linear, fslib.ntk_fourier: empirical NTKs against closed forms,
the spectrum, kernel dynamics against trained linear networks, and the DFT diagonalisation
of circular CNN kernels."""

import doctest
import math

import pandas as pd
import pytest
import torch
from torch import nn

from fslib import dynamics, ntk, ntk_flow
from fslib import ntk_fourier as nf
from fslib import ntk_linear as nl


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("module", [ntk, ntk_flow, nl, nf])
def test_doctests(module):
    result = doctest.testmod(module, extraglobs={"torch": torch, "nn": nn})
    assert result.attempted > 0 and result.failed == 0


# --------------------------------------------------------------------------- empirical NTK
def test_empirical_ntk_of_a_linear_layer_is_its_closed_form():
    x = torch.randn(7, 5, generator=gen(), dtype=torch.float64)
    layer = nn.Linear(5, 3).double()  # with a bias: K_ab = delta_ab (x . x' + 1)
    full = ntk.empirical_ntk(layer, x, kind="full", device="cpu")
    want = (x @ x.T + 1)[:, :, None, None] * torch.eye(3, dtype=torch.float64)
    assert full.shape == (7, 7, 3, 3)
    torch.testing.assert_close(full, want)
    torch.testing.assert_close(ntk.empirical_ntk(layer, x, kind="trace", device="cpu"), 3 * (x @ x.T + 1))


def test_empirical_ntk_between_two_sets_and_in_bounded_memory_agree():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    a = torch.randn(9, 4, generator=gen(1), dtype=torch.float64)
    b = torch.randn(5, 4, generator=gen(2), dtype=torch.float64)
    stored = ntk.empirical_ntk(model, a, b, kind="full", batch_size=4, device="cpu")
    blocks = ntk.empirical_ntk(model, a, b, kind="full", batch_size=4, max_bytes=1, device="cpu")
    torch.testing.assert_close(stored, blocks)
    gram = ntk.empirical_ntk(model, torch.cat([a, b]), kind="full", device="cpu")
    torch.testing.assert_close(gram[:9, 9:], stored)
    torch.testing.assert_close(gram, gram.permute(1, 0, 3, 2))  # K_ab(x, x') = K_ba(x', x)


def test_empirical_ntk_rejects_bad_kind():
    with pytest.raises(ValueError, match="valid: full, trace"):
        ntk.empirical_ntk(nn.Linear(2, 1), torch.zeros(2, 2), kind="diag", device="cpu")


def test_calibrate_batchnorm_uses_the_inputs_statistics_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3))
    x = torch.randn(10, 2, 5, 5, generator=gen())
    out = ntk.calibrate_batchnorm(model, x)
    with torch.no_grad():
        act = model[0](x)
    torch.testing.assert_close(out[1].running_mean, act.mean((0, 2, 3)))
    torch.testing.assert_close(out[1].running_var, act.var((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert not out.training and torch.equal(model[1].running_mean, torch.zeros(3))
    halves = ntk.calibrate_batchnorm(model, x, batch_size=5)  # equal batches: the mean is still exact
    torch.testing.assert_close(halves[1].running_mean, act.mean((0, 2, 3)))


# --------------------------------------------------------------------------- spectrum and alignment
def test_ntk_eigen_is_sorted_non_negative_and_exact():
    z = torch.randn(12, 4, generator=gen(), dtype=torch.float64)
    k = z @ z.T  # rank 4: eight eigenvalues are rounding noise around 0
    lam, u = ntk.ntk_eigen(k)
    assert (lam >= 0).all() and (lam[:-1] >= lam[1:]).all()
    torch.testing.assert_close(u @ torch.diag(lam) @ u.T, k)
    assert (lam[4:] < 1e-10 * lam[0]).all()
    with pytest.raises(ValueError, match="not positive"):
        ntk.ntk_eigen(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))


def test_full_kernels_flatten_as_sample_major():
    k = torch.randn(3, 3, 2, 2, generator=gen())
    flat = ntk.flatten_kernel(k)
    assert flat[1 * 2 + 0, 2 * 2 + 1] == k[1, 2, 0, 1]


def test_alignment_measures():
    labels = torch.arange(30) % 3
    y = ntk.centred_onehot(labels, 3)
    assert ntk.kernel_target_alignment(y @ y.T, y) == pytest.approx(1.0)
    k = torch.eye(30, dtype=torch.float64) + 0.1
    _, u = ntk.ntk_eigen(k)
    share = ntk.eigen_alignment(u, y, k=30)
    torch.testing.assert_close(share.sum(0), torch.ones(3, dtype=torch.float64))
    # the Rayleigh speed of a label-aligned kernel beats every permutation of the labels
    speed = ntk.rayleigh_speed(y @ y.T + 0.01 * k, y)
    null = ntk.rayleigh_null(y @ y.T + 0.01 * k, labels, 3, n_perm=30)
    assert speed.min() > null.quantile(0.9)
    centred = ntk.centre_kernel(k)
    torch.testing.assert_close(centred.sum(0), torch.zeros(30, dtype=torch.float64))


# --------------------------------------------------------------------------- linear case
def test_mixture_has_the_planted_structure():
    cfg = nl.MixtureConfig(dim=6, n_aligned=30, n_conflicting=5, noise=0.3)
    m = nl.gaussian_mixture(cfg, seed=1)
    assert len(m) == 70 and int(m.aligned.sum()) == 60
    assert cfg.conflicting_fraction == pytest.approx(5 / 35)
    assert (m.y * m.x[:, 0]).mean() == pytest.approx(1.0, abs=0.1)
    assert (m.s * m.x[:, 1]).mean() == pytest.approx(1.0, abs=0.1)


def test_converged_weights_are_the_least_squares_limit():
    cfg = nl.MixtureConfig(dim=2, n_aligned=9000, n_conflicting=1000, noise=0.5)
    m = nl.gaussian_mixture(cfg, seed=0)
    w = torch.linalg.lstsq(m.x, m.y[:, None]).solution.reshape(-1)
    torch.testing.assert_close(w, nl.converged_weights(cfg), atol=0.03, rtol=0)
    assert nl.converged_weights(cfg)[1] > 0.2  # within-cluster noise keeps a shortcut weight


def test_deep_linear_ntk_closed_form_equals_the_empirical_ntk():
    m = nl.gaussian_mixture(nl.MixtureConfig(dim=5, n_aligned=4, n_conflicting=2), seed=0)
    for depth in (1, 2, 4):
        net = nl.deep_linear(5, width=7, depth=depth, seed=depth)
        torch.testing.assert_close(nl.deep_linear_ntk(net, m.x), ntk.empirical_ntk(net, m.x, device="cpu"))
    torch.testing.assert_close(nl.deep_linear_ntk(nl.linear_model(5), m.x), nl.linear_ntk(m.x))


def test_deep_linear_ntk_concentrates_around_its_expected_scale():
    x = torch.randn(6, 10, generator=gen(), dtype=torch.float64)
    net = nl.deep_linear(10, width=800, depth=3, seed=0)
    ratio = torch.trace(nl.deep_linear_ntk(net, x)) / torch.trace(nl.linear_ntk(x))
    assert float(ratio) == pytest.approx(nl.deep_linear_ntk_scale(10, 800, 3), rel=0.1)


def test_trained_linear_outputs_follow_the_kernel_flow():
    cfg = nl.MixtureConfig(dim=8, n_aligned=20, n_conflicting=4, noise=0.4)
    m = nl.gaussian_mixture(cfg, seed=0)
    k = nl.linear_ntk(m.x)
    lam, u = ntk.ntk_eigen(k)
    lr = 0.01 / float(lam[0])
    steps = 400
    rec = nl.train_gd(nl.linear_model(cfg.dim), m.x, m.y, lr=lr, steps=steps, every=50)
    flow = ntk_flow.kernel_flow(k, m.y, rec["steps"].tolist(), lr=lr)[..., 0]
    # gradient flow vs gradient descent differ by O(lr lambda_max) = 1 %
    assert (rec["train"] - flow).abs().max() < 0.01 * m.y.abs().max()
    assert (rec["train"][-1] - rec["train"][0]).abs().max() > 0.5  # the model did move
    # gradient descent itself is exactly (I - (I - lr K)^t) Y
    exact = (torch.eye(len(m)) - torch.linalg.matrix_power(torch.eye(len(m), dtype=torch.float64) - lr * k, steps)) @ m.y
    torch.testing.assert_close(rec["train"][-1], exact)
    fitted = nl.fitted_components(rec["train"], m.y, u, k=2)[-1]
    torch.testing.assert_close(fitted, 1 - torch.exp(-lr * lam[:2] * steps), atol=0.01, rtol=0)


def test_kernel_flow_on_held_out_points():
    x = torch.randn(10, 3, generator=gen(), dtype=torch.float64)
    y = ntk.centred_onehot(torch.arange(10) % 2, 2)
    k = x @ x.T + 1  # rank 4: the flow fits the targets' projection on its range
    train = ntk_flow.kernel_flow(k, y, [0.0, 0.3, 5.0], lr=0.5)
    as_cross = ntk_flow.kernel_flow(k, y, [0.0, 0.3, 5.0], lr=0.5, cross=k)
    torch.testing.assert_close(train, as_cross)
    assert train[0].abs().max() == 0
    xt = torch.randn(4, 3, generator=gen(1), dtype=torch.float64)
    late = ntk_flow.kernel_flow(k, y, [1e6], cross=xt @ x.T + 1)[0]
    torch.testing.assert_close(late, (xt @ x.T + 1) @ torch.linalg.pinv(k) @ y)
    f0 = torch.randn(10, 2, generator=gen(2), dtype=torch.float64)
    full_rank = k + torch.eye(10, dtype=torch.float64)
    shifted = ntk_flow.kernel_flow(full_rank, y, [0.0, 1e6], initial=f0)
    torch.testing.assert_close(shifted[0], f0)
    torch.testing.assert_close(shifted[1], y)


def test_class_curves_feed_learned_at():
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    y = ntk.centred_onehot(labels, 3)
    k = 10 * (y @ y.T) + torch.eye(6, dtype=torch.float64)  # a kernel that knows the labels
    times = ntk_flow.log_times(1e-3, 10, 20)
    curves = ntk_flow.class_curves(ntk_flow.kernel_flow(k, y, times), labels, times)
    assert set(curves.columns) == {"iteration", "set", "class", "accuracy", "fpr"}
    first = dynamics.learned_at(curves, 0.9, tolerance=0.1, max_fpr=0.1)
    assert first["iteration"].notna().all() and (first["iteration"] > 0).all()
    zero = curves[curves["iteration"] == 0]
    assert zero.loc[zero["class"] == 0, "fpr"].item() == 1.0  # argmax of all-zero outputs


def test_feature_influence_of_a_single_direction():
    v = nl.signal_directions(4)
    x = torch.randn(50, 4, generator=gen(), dtype=torch.float64)
    share = nl.feature_influence(3 * v[0], v, x)
    torch.testing.assert_close(share, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))


# --------------------------------------------------------------------------- circular CNNs
def test_linear_circular_cnn_forward_is_a_circular_convolution():
    x = torch.randn(3, 2, 4, 5, generator=gen(), dtype=torch.float64)
    net = nf.LinearCircularCNN(2, (4, 5), depth=3, outputs=2, seed=0)
    h = nf.circular_conv(net.first, x).sum(1)
    for w in net.hidden:
        h = nf.circular_conv(w, h)
    torch.testing.assert_close(net(x), torch.einsum("bhw,ahw->ba", h, net.readout))


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_circular_cnn_ntk_closed_form_equals_the_empirical_ntk(depth):
    x = torch.randn(4, 3, 4, 6, generator=gen(depth), dtype=torch.float64)
    net = nf.LinearCircularCNN(3, (4, 6), depth=depth, outputs=2, seed=depth)
    torch.testing.assert_close(nf.circular_cnn_ntk(net, x), ntk.empirical_ntk(net, x, kind="full", device="cpu"))
    trace = nf.circular_cnn_ntk(net, x, kind="trace")
    phi = nf.circular_cnn_features(net, x)
    torch.testing.assert_close(phi @ phi.T, trace)


def _off_frequency(operator: torch.Tensor, channels: int, h: int, w: int) -> tuple[float, float]:
    """Largest |entry| of (I kron F) Omega (I kron F)^H between different frequencies, and overall."""
    f = torch.kron(torch.eye(channels, dtype=torch.complex128), nf.dft_matrix(h, w))
    d = (f @ operator.to(torch.complex128) @ f.conj().T).reshape(channels, h * w, channels, h * w)
    k = torch.arange(h * w)
    off = d.clone()
    off[:, k, :, k] = 0
    return float(off.abs().max()), float(d.abs().max())


def test_circular_cnn_kernel_is_diagonalised_by_the_dft():
    h, w = 4, 6
    net = nf.LinearCircularCNN(2, (h, w), depth=2, outputs=2, seed=0)
    for a, b in ((0, 0), (0, 1)):
        off, scale = _off_frequency(nf.circular_cnn_operator(net, a, b), 2, h, w)
        assert scale > 1e-3 and off < 1e-12 * scale
    # a dense linear model's kernel is not: the check can fail
    dense = torch.randn(2 * h * w, 2 * h * w, generator=gen(), dtype=torch.float64)
    off, scale = _off_frequency(dense @ dense.T, 2, h, w)
    assert off > 0.1 * scale


@pytest.mark.parametrize("filter_size", [None, 2, 4])
def test_quadratic_cnn_expected_ntk_matches_a_wide_network(filter_size):
    x = torch.randn(4, 2, 6, 5, generator=gen(), dtype=torch.float64)
    kw = {"width": 20000, "filter_std": 0.5, "readout_std": 0.7, "filter_size": filter_size}
    net = nf.QuadraticCircularCNN(2, (6, 5), seed=0, **kw)
    empirical = ntk.empirical_ntk(net, x, device="cpu")
    expected = nf.quadratic_cnn_ntk(x, **kw)
    assert ((empirical - expected).abs() / expected.abs()).max() < 0.05  # Monte Carlo error ~1 % at this width


def test_lag_weights_are_the_fourier_pair_of_the_filter_response():
    h, w, s = 6, 5, 3
    taps = torch.zeros(h, w, dtype=torch.float64)
    taps[:s, :s] = 1
    response = torch.fft.fft2(taps).abs() ** 2  # |D(k)|^2
    torch.testing.assert_close(torch.fft.fft2(nf.lag_weights((h, w), s)).real, response)
    assert torch.equal(nf.lag_weights((h, w)), torch.full((h, w), float(h * w), dtype=torch.float64))


def test_small_filters_blur_the_predicted_loss_map():
    g = gen()
    power = torch.rand(2, 8, 8, 1, 1, generator=g, dtype=torch.float64).to(torch.complex128)
    sharp = nf.predicted_loss_maps(power)
    blurred = nf.predicted_loss_maps(power, filter_size=3)
    excess = (power - power.mean(0, keepdim=True))[..., 0, 0]
    response = torch.fft.fftshift(torch.fft.fft2(nf.lag_weights((8, 8), 3)).real)  # |D|^2, centred at DC
    c = 4
    want = torch.zeros(2, 8, 8, dtype=torch.float64)
    for k in range(64):  # brute force: sum_k' |D(k - k')|^2 W(k') / N^2, circular in the centred layout
        kr, kc = divmod(k, 8)
        for j in range(64):
            jr, jc = divmod(j, 8)
            want[:, kr, kc] += response[(kr - jr + c) % 8, (kc - jc + c) % 8] * excess[:, jr, jc].real / 64**2
    torch.testing.assert_close(blurred, power[..., 0, 0].real * want)
    torch.testing.assert_close(sharp, power[..., 0, 0].real * excess.real)


def test_predicted_loss_map_finds_a_planted_frequency():
    n, size = 40, 8
    g = gen()
    noise = 0.3 * torch.randn(n, 1, size, size, generator=g, dtype=torch.float64)
    rows = torch.arange(size, dtype=torch.float64)[:, None]
    cols = torch.arange(size, dtype=torch.float64)[None, :]
    phase = 2 * math.pi * torch.rand(n // 2, 1, 1, 1, generator=g, dtype=torch.float64)
    wave = torch.cos(2 * math.pi * (1 * rows + 2 * cols) / size + phase)  # random phase: zero class mean
    images = noise.clone()
    images[: n // 2] += wave
    labels = torch.tensor([0] * (n // 2) + [1] * (n // 2))
    maps = nf.predicted_loss_maps(nf.class_power(images, labels, 2))
    c = size // 2
    top = divmod(int(maps[0].argmax()), size)
    assert top in {(c + 1, c + 2), (c - 1, c - 2)}  # the wave or its conjugate partner
    assert maps[1].max() < maps[0].max() / 10
    assert images[: n // 2].mean(0).abs().max() < 0.5  # no linear signal: a linear model has nothing to use


def test_class_power_needs_every_class():
    with pytest.raises(ValueError, match="every class"):
        nf.class_power(torch.zeros(2, 1, 4, 4), torch.tensor([0, 0]), 2)


def test_curves_table_is_a_dataframe():
    curves = ntk_flow.class_curves(torch.zeros(2, 3, 2), torch.tensor([0, 1, 1]), [0.0, 1.0])
    assert isinstance(curves, pd.DataFrame) and len(curves) == 4


def test_predict_learning_ranks_a_separable_class_first():
    g = gen()
    labels = torch.arange(40) % 2
    x = torch.randn(40, 5, generator=g, dtype=torch.float64)
    x[:, 0] += 3.0 * (2 * labels - 1)  # class structure along one axis
    test = torch.randn(20, 5, generator=gen(1), dtype=torch.float64)
    test_labels = torch.arange(20) % 2
    test[:, 0] += 3.0 * (2 * test_labels - 1)
    k = ntk.normalize_kernel(x @ x.T)
    cross = test @ x.T / torch.diagonal(x @ x.T).mean()
    pred = ntk_flow.predict_learning(k, cross, labels, test_labels, 2, ntk_flow.log_times(1e-3, 1e3, 30), n_perm=20)
    assert pred.final_accuracy > 0.9
    assert pred.speed.min() > pred.null.quantile(0.95)


def test_data_kernels_are_normalised_and_consistent():
    train = torch.randn(6, 3, 8, 8, generator=gen(), dtype=torch.float64)
    test = torch.randn(4, 3, 8, 8, generator=gen(1), dtype=torch.float64)
    cnn = nf.LinearCircularCNN(3, (8, 8), depth=2, outputs=4, seed=0)
    kernels = nf.data_kernels(train, test, cnn)
    for k, cross in kernels.values():
        assert k.shape == (6, 6) and cross.shape == (4, 6)
        assert float(torch.diagonal(k).mean()) == pytest.approx(1.0)
    lin, _ = kernels["linear circular CNN"]
    raw = nf.circular_cnn_ntk(cnn, train, kind="trace")
    torch.testing.assert_close(lin, raw / torch.diagonal(raw).mean())


def test_cue_strengths_of_a_pure_sinusoid():
    size = 8
    rows = torch.arange(size, dtype=torch.float64)[:, None]
    wave = torch.cos(2 * math.pi * 2 * rows / size).expand(size, size)[None, None].repeat(1, 3, 1, 1)
    c = size // 2
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[c + 2, c] = mask[c - 2, c] = True
    share = nf.cue_strengths(wave, {"wave": mask, "rest": ~mask})
    assert share.loc[0, "wave"] == pytest.approx(1.0) and share.loc[0, "rest"] == pytest.approx(0.0, abs=1e-12)


def test_order_agreement_counts_never_as_last():
    measured = pd.DataFrame({"C0": [10.0, 5.0], "C1": [20.0, float("nan")], "C2": [30.0, 1.0]}, index=["a", "b"])
    same = ntk_flow.order_agreement(measured * 0.01, measured)
    assert same.tolist() == [1.0, 1.0]
    reversed_ = ntk_flow.order_agreement(pd.DataFrame({"C0": [3.0, 1.0], "C1": [2.0, 2.0], "C2": [1.0, 3.0]},
                                                      index=["a", "b"]), measured)
    assert reversed_["a"] == -1.0 and reversed_["b"] == pytest.approx(-0.5)
    flat = ntk_flow.order_agreement(pd.DataFrame({"C0": [1.0], "C1": [1.0], "C2": [1.0]}, index=["a"]), measured.loc[["a"]])
    assert math.isnan(flat["a"])
