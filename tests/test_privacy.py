"""Privacy accountant: the exact Gaussian curve against numerical integration.

The references here do not use the closed form delta = Phi(..) - e^eps Phi(..):
they integrate the hockey-stick divergence of the two output densities on a
grid, and compose mechanisms by convolving privacy-loss densities with an FFT.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fedbus.aggregator.privacy import (
    DEFAULT_RDP_ORDERS,
    GaussianAccountant,
    PrivacySpent,
    _erfcx,
    calibrate_noise_multiplier,
    gaussian_delta,
    gaussian_epsilon,
    noise_std,
    rdp_epsilon,
)
from fedbus.broker.errors import ConfigError

# --------------------------------------------------------------------------- references


def _log_normal_pdf(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    return -0.5 * ((x - mean) / std) ** 2 - math.log(std * math.sqrt(2.0 * math.pi))


def _simpson(values: np.ndarray, step: float) -> float:
    """Composite Simpson rule on an odd number of equally spaced samples."""
    assert values.size % 2 == 1
    inner = 4.0 * values[1:-1:2].sum() + 2.0 * values[2:-1:2].sum()
    return float(step / 3.0 * (values[0] + values[-1] + inner))


def hockey_stick_on_grid(epsilon: float, sigma: float) -> float:
    """delta(eps) = integral of max(0, p - e^eps q), p = N(1, s^2), q = N(0, s^2), plain grid.

    The straightforward definition: densities on a fine grid over +-12 sigma,
    trapezoid rule. Good to ~1e-9 for moderate parameters.
    """
    step = sigma * 2e-5
    x = np.arange(-12.0 * sigma, 1.0 + 12.0 * sigma, step)
    p = np.exp(_log_normal_pdf(x, 1.0, sigma))
    q = np.exp(_log_normal_pdf(x, 0.0, sigma))
    return float(np.trapezoid(np.maximum(0.0, p - math.exp(epsilon) * q), dx=step))


def hockey_stick_log_space(epsilon: float, sigma: float) -> float:
    """The same integral, written to stay finite for huge epsilon and tiny delta.

    Only the region where p > e^eps q contributes; there the integrand is
    p(x) (1 - exp(eps - log p(x) + log q(x))), which is evaluated without ever
    forming e^eps. The region starts where the log-likelihood ratio (linear in x,
    found from two evaluations) equals eps; Simpson's rule on the smooth
    integrand that follows.
    """

    def log_ratio(x: np.ndarray) -> np.ndarray:
        return _log_normal_pdf(x, 1.0, sigma) - _log_normal_pdf(x, 0.0, sigma)

    at_zero, at_one = log_ratio(np.array([0.0, 1.0]))
    start = (epsilon - at_zero) / (at_one - at_zero)
    x = np.linspace(start, start + 40.0 * sigma, 400_001)
    integrand = np.exp(_log_normal_pdf(x, 1.0, sigma)) * -np.expm1(epsilon - log_ratio(x))
    return _simpson(integrand, float(x[1] - x[0]))


def composed_delta_by_convolution(epsilon: float, sigma: float, steps: int) -> float:
    """delta of `steps` Gaussian mechanisms (std sigma) by convolving privacy losses.

    For one step the privacy loss L = log p(X)/q(X), X ~ p, is the linear image
    (2X - 1) / (2 sigma^2) of X ~ N(1, sigma^2): N(1/(2 s^2), 1/s^2). Losses of
    independent steps add, so the composed density is the steps-fold convolution
    (done numerically here), and delta(eps) = E[(1 - exp(eps - L_T))_+].
    """
    mean, std = 1.0 / (2.0 * sigma**2), 1.0 / sigma
    step = 1e-3 * std
    # Place the lattice so that epsilon is a node of the composed lattice.
    start = epsilon / steps - step * math.ceil((epsilon / steps - (mean - 14.0 * std)) / step)
    count = int(math.ceil((mean + 14.0 * std - start) / step)) + 1
    single = np.exp(_log_normal_pdf(start + step * np.arange(count), mean, std))
    size = steps * (count - 1) + 1
    fft_size = 1 << (size - 1).bit_length()
    composed = np.fft.irfft(np.fft.rfft(single, fft_size) ** steps, fft_size)[:size]
    composed *= step ** (steps - 1)
    losses = steps * start + step * np.arange(size)
    first = int(round((epsilon - steps * start) / step))
    tail = composed[first:] * -np.expm1(epsilon - losses[first:])
    if tail.size % 2 == 0:
        tail = tail[:-1]  # the dropped sample is ~1e-40
    return _simpson(tail, step)


# --------------------------------------------------------------------------- 1. exact curve


@pytest.mark.parametrize(
    ("epsilon", "sigma"),
    [(0.0, 1.0), (0.5, 1.0), (1.0, 0.5), (2.0, 2.0), (3.0, 0.8), (0.1, 5.0), (5.0, 0.3)],
)
def test_gaussian_delta_matches_the_hockey_stick_integral(epsilon: float, sigma: float) -> None:
    reference = hockey_stick_on_grid(epsilon, sigma)

    delta = gaussian_delta(epsilon, 1.0 / sigma)

    assert delta == pytest.approx(reference, rel=1e-8)  # observed: <= 6e-10


@pytest.mark.parametrize(
    ("epsilon", "mu"),
    [
        (0.0, 0.01),
        (0.06, 0.01),
        (3.0, 0.5),
        (30.0, 5.0),
        (534.9, math.sqrt(1000.0) / 1.1),
        (1250.0, 50.0),
        (1600.0, 50.0),
    ],
)
def test_gaussian_delta_stays_accurate_at_extremes(epsilon: float, mu: float) -> None:
    # exp(1600) and Phi(-57) are outside the double range; the combination is not.
    reference = hockey_stick_log_space(epsilon, 1.0 / mu)

    delta = gaussian_delta(epsilon, mu)

    assert reference > 1e-13
    assert delta == pytest.approx(reference, rel=1e-9)  # observed: <= 3e-11


@pytest.mark.parametrize(("sigma", "steps"), [(1.0, 4), (2.0, 10), (0.8, 3)])
@pytest.mark.parametrize("epsilon", [0.5, 2.0])
def test_composition_of_flushes_matches_convolved_privacy_loss(
    sigma: float, steps: int, epsilon: float
) -> None:
    accountant = GaussianAccountant(delta=1e-5)
    for _ in range(steps):
        accountant.record_flush(sigma)
    by_convolution = composed_delta_by_convolution(epsilon, sigma, steps)
    one_step_with_less_noise = hockey_stick_on_grid(epsilon, sigma / math.sqrt(steps))

    delta = gaussian_delta(epsilon, accountant.spent().mu)

    assert delta == pytest.approx(by_convolution, rel=1e-10)  # observed: <= 2e-15
    assert delta == pytest.approx(one_step_with_less_noise, rel=1e-8)


def test_scaled_complementary_error_function() -> None:
    for t in np.linspace(0.0, 25.0, 251):
        assert _erfcx(float(t)) == pytest.approx(math.exp(t * t) * math.erfc(t), rel=1e-12)
    # Continuous where the evaluation switches to the asymptotic series.
    assert _erfcx(math.nextafter(10.0, 0.0)) == pytest.approx(_erfcx(10.0), rel=1e-14)
    assert _erfcx(1e6) == pytest.approx(1.0 / (1e6 * math.sqrt(math.pi)), rel=1e-12)


# --------------------------------------------------------------------------- 2. fixed settings

# Computed independently of fedbus (hockey-stick integral of N(mu, 1) against
# N(0, 1) by Simpson's rule on 2e6 points past the crossing, then bisection on
# epsilon): 534.8979801635206 and 4.377178095682754.
FIXED_SETTINGS = [
    # (noise multiplier z, flushes T, delta, epsilon)
    (1.1, 1000, 1e-5, 534.8979801635206),  # mu = sqrt(1000)/1.1 = 28.748
    (10.0, 100, 1e-5, 4.377178095682754),  # mu = 1
]


@pytest.mark.parametrize(("noise_multiplier", "steps", "delta", "expected"), FIXED_SETTINGS)
def test_fixed_settings(noise_multiplier: float, steps: int, delta: float, expected: float) -> None:
    accountant = GaussianAccountant(delta)
    for _ in range(steps):
        accountant.record_flush(noise_multiplier)

    spent = accountant.spent()

    assert spent.steps == steps
    assert spent.delta == delta
    assert spent.mu == pytest.approx(math.sqrt(steps) / noise_multiplier, rel=1e-12)
    assert spent.epsilon == pytest.approx(expected, rel=1e-9)
    # The integral at the reported epsilon reproduces delta (the check behind `expected`).
    assert hockey_stick_log_space(spent.epsilon, 1.0 / spent.mu) == pytest.approx(delta, rel=1e-6)
    # The RDP conversion is valid but looser: 551.19 and 5.2988 here.
    assert spent.epsilon < rdp_epsilon(delta, spent.mu) < 1.25 * spent.epsilon


def test_more_flushes_spend_more_and_more_noise_spends_less() -> None:
    accountant = GaussianAccountant(1e-6)
    previous = accountant.spent().epsilon
    assert previous == 0.0
    for _ in range(50):
        accountant.record_flush(2.0)
        current = accountant.spent().epsilon
        assert current > previous
        previous = current

    epsilons = []
    for noise_multiplier in (0.5, 0.8, 1.0, 2.0, 5.0, 20.0):
        noisier = GaussianAccountant(1e-6)
        for _ in range(50):
            noisier.record_flush(noise_multiplier)
        epsilons.append(noisier.spent().epsilon)
    assert epsilons == sorted(epsilons, reverse=True)
    assert len(set(epsilons)) == len(epsilons)


def test_degenerate_noise() -> None:
    fresh = GaussianAccountant(1e-5).spent()
    assert fresh == PrivacySpent(epsilon=0.0, delta=1e-5, steps=0, mu=0.0)

    noiseless = GaussianAccountant(1e-5)
    noiseless.record_flush(1.0)
    noiseless.record_flush(0.0)  # one exact release: no finite epsilon covers it
    noiseless.record_flush(1.0)
    assert noiseless.spent().epsilon == math.inf
    assert noiseless.spent().steps == 3

    silent = GaussianAccountant(1e-5)
    silent.record_flush(math.inf)  # infinite noise releases nothing
    assert silent.spent() == PrivacySpent(epsilon=0.0, delta=1e-5, steps=1, mu=0.0)

    assert gaussian_epsilon(1e-5, 0.0) == 0.0
    assert gaussian_epsilon(1e-5, math.inf) == math.inf
    assert gaussian_delta(1.0, 0.0) == 0.0
    assert gaussian_delta(1.0, math.inf) == 1.0
    assert gaussian_delta(math.inf, 3.0) == 0.0
    assert rdp_epsilon(1e-5, 0.0) == 0.0
    assert rdp_epsilon(1e-5, math.inf) == math.inf


def test_epsilon_is_zero_when_delta_already_covers_it() -> None:
    # delta(0) for mu-GDP is the total variation distance erf(mu / (2 sqrt 2)).
    assert gaussian_delta(0.0, 0.01) == pytest.approx(math.erf(0.01 / (2.0 * math.sqrt(2.0))))
    assert gaussian_epsilon(0.01, 0.01) == 0.0
    assert gaussian_epsilon(0.003, 0.01) > 0.0


# --------------------------------------------------------------------------- 3. properties

mus = st.floats(min_value=0.01, max_value=50.0)
deltas = st.floats(min_value=1e-12, max_value=0.5)


@settings(max_examples=300, deadline=None)
@given(delta=deltas, mu=mus)
def test_gaussian_epsilon_inverts_gaussian_delta(delta: float, mu: float) -> None:
    epsilon = gaussian_epsilon(delta, mu)

    assert math.isfinite(epsilon)
    assert gaussian_delta(epsilon, mu) <= delta  # never understates the loss
    if epsilon > 0.0:
        assert gaussian_delta(epsilon, mu) == pytest.approx(delta, rel=1e-6)
        assert gaussian_epsilon(delta, mu) == epsilon  # deterministic
    else:
        assert gaussian_delta(0.0, mu) <= delta


@settings(max_examples=300, deadline=None)
@given(excess=st.floats(min_value=0.0, max_value=7.0), mu=mus)
def test_gaussian_delta_is_inverted_by_gaussian_epsilon(excess: float, mu: float) -> None:
    # eps = mu (excess + mu/2) puts delta near Phi(-excess): the range under test.
    epsilon = mu * (excess + mu / 2.0)
    delta = gaussian_delta(epsilon, mu)
    assume(1e-12 <= delta <= 0.5)

    assert gaussian_epsilon(delta, mu) == pytest.approx(epsilon, rel=1e-8)


@settings(max_examples=300, deadline=None)
@given(delta=deltas, mu=mus)
def test_rdp_bound_is_never_below_the_exact_epsilon(delta: float, mu: float) -> None:
    exact = gaussian_epsilon(delta, mu)

    assert rdp_epsilon(delta, mu) >= exact
    assert rdp_epsilon(delta, mu, orders=[2.0]) >= rdp_epsilon(delta, mu)


@settings(max_examples=100, deadline=None)
@given(
    epsilon=st.floats(min_value=0.05, max_value=50.0),
    delta=st.floats(min_value=1e-12, max_value=0.1),
    steps=st.integers(min_value=1, max_value=3000),
)
def test_calibrated_noise_multiplier_round_trips(epsilon: float, delta: float, steps: int) -> None:
    noise_multiplier = calibrate_noise_multiplier(epsilon, delta, steps)

    def epsilon_after(z: float) -> float:
        accountant = GaussianAccountant(delta)
        for _ in range(steps):
            accountant.record_flush(z)
        return accountant.spent().epsilon

    assert epsilon_after(noise_multiplier) <= epsilon
    assert epsilon_after(noise_multiplier) == pytest.approx(epsilon, rel=1e-6)
    assert epsilon_after(noise_multiplier * (1.0 - 1e-6)) > epsilon  # it is the smallest


def test_calibration_for_zero_epsilon_is_finite() -> None:
    noise_multiplier = calibrate_noise_multiplier(0.0, 1e-3, 10)

    assert math.isfinite(noise_multiplier)
    assert gaussian_epsilon(1e-3, math.sqrt(10) / noise_multiplier) == 0.0


def test_noise_std_is_multiplier_times_clip() -> None:
    assert noise_std(clip=2.0, noise_multiplier=1.5) == 3.0
    assert noise_std(clip=1.0, noise_multiplier=0.0) == 0.0


# --------------------------------------------------------------------------- 4. state, errors


def test_state_round_trip_reports_the_same_spent_bit_for_bit() -> None:
    accountant = GaussianAccountant(1e-5)
    for noise_multiplier in (0.7, 1.3, 2.9, 1.1, 0.95) * 7:
        accountant.record_flush(noise_multiplier)

    state = accountant.to_state()
    restored = GaussianAccountant.from_state(state, delta=1e-5)
    through_json = GaussianAccountant.from_state(json.loads(json.dumps(state)), delta=1e-5)

    assert restored.spent() == accountant.spent()
    assert through_json.spent() == accountant.spent()
    restored.record_flush(1.0)
    accountant.record_flush(1.0)
    assert restored.spent() == accountant.spent()
    assert set(state) == {"steps", "mu_squared"}


def test_noiseless_state_round_trips() -> None:
    accountant = GaussianAccountant(1e-5)
    accountant.record_flush(0.0)

    restored = GaussianAccountant.from_state(accountant.to_state(), delta=1e-5)

    assert restored.spent().epsilon == math.inf


@pytest.mark.parametrize(
    "call",
    [
        lambda: gaussian_delta(-1.0, 1.0),
        lambda: gaussian_delta(math.nan, 1.0),
        lambda: gaussian_delta(1.0, -0.1),
        lambda: gaussian_delta(1.0, math.nan),
        lambda: gaussian_epsilon(0.0, 1.0),
        lambda: gaussian_epsilon(1.0, 1.0),
        lambda: gaussian_epsilon(-1e-5, 1.0),
        lambda: gaussian_epsilon(math.nan, 1.0),
        lambda: gaussian_epsilon(1e-5, -1.0),
        lambda: rdp_epsilon(1e-5, 1.0, orders=[]),
        lambda: rdp_epsilon(1e-5, 1.0, orders=[1.0, 2.0]),
        lambda: rdp_epsilon(1e-5, 1.0, orders=[0.5]),
        lambda: rdp_epsilon(2.0, 1.0),
        lambda: GaussianAccountant(0.0),
        lambda: GaussianAccountant(1.0),
        lambda: GaussianAccountant(1e-5).record_flush(-1.0),
        lambda: GaussianAccountant(1e-5).record_flush(math.nan),
        lambda: noise_std(0.0, 1.0),
        lambda: noise_std(-1.0, 1.0),
        lambda: noise_std(math.inf, 1.0),
        lambda: noise_std(1.0, -1.0),
        lambda: noise_std(1.0, math.inf),
        lambda: calibrate_noise_multiplier(-1.0, 1e-5, 10),
        lambda: calibrate_noise_multiplier(math.inf, 1e-5, 10),
        lambda: calibrate_noise_multiplier(1.0, 0.0, 10),
        lambda: calibrate_noise_multiplier(1.0, 1e-5, 0),
        lambda: calibrate_noise_multiplier(1.0, 1e-5, True),
        lambda: calibrate_noise_multiplier(1.0, 1e-5, 2.5),
        lambda: GaussianAccountant.from_state({"steps": 3}, delta=1e-5),
        lambda: GaussianAccountant.from_state({"mu_squared": 1.0}, delta=1e-5),
        lambda: GaussianAccountant.from_state({"steps": -1, "mu_squared": 1.0}, 1e-5),
        lambda: GaussianAccountant.from_state({"steps": True, "mu_squared": 1.0}, 1e-5),
        lambda: GaussianAccountant.from_state({"steps": 2.0, "mu_squared": 1.0}, 1e-5),
        lambda: GaussianAccountant.from_state({"steps": 2, "mu_squared": -1.0}, 1e-5),
        lambda: GaussianAccountant.from_state({"steps": 2, "mu_squared": math.nan}, 1e-5),
        lambda: GaussianAccountant.from_state({"steps": 2, "mu_squared": "1"}, 1e-5),
        lambda: GaussianAccountant.from_state({"steps": 0, "mu_squared": 1.0}, 1e-5),
        lambda: GaussianAccountant.from_state({"steps": 2, "mu_squared": 1.0}, delta=0.0),
    ],
)
def test_bad_arguments_raise_config_error(call: object) -> None:
    assert callable(call)
    with pytest.raises(ConfigError):
        call()


def test_default_orders_are_valid() -> None:
    assert all(order > 1.0 for order in DEFAULT_RDP_ORDERS)
    assert list(DEFAULT_RDP_ORDERS) == sorted(set(DEFAULT_RDP_ORDERS))
