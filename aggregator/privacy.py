"""Privacy accounting for central differential privacy in the buffered aggregator.

What is accounted. Each model step (a "flush") sums at most one clipped row per
node, L2 norm <= C (a node's several updates inside one flush are merged and
clipped together), then adds Gaussian noise N(0, (z C)^2) to every coordinate,
z being the noise multiplier. One flush is therefore a plain Gaussian mechanism
with sensitivity C and standard deviation z C, which is exactly mu-GDP with
mu = 1/z (Dong, Roth, Su 2019, "Gaussian Differential Privacy"). T flushes
compose exactly to mu = sqrt(sum_t 1 / z_t^2), and mu-GDP is equivalent to the
family of (epsilon, delta(epsilon)) guarantees with

    delta(eps) = Phi(-eps/mu + mu/2) - exp(eps) Phi(-eps/mu - mu/2)

(Balle & Wang 2018, "analytic Gaussian mechanism"; Dong et al., Corollary 2.13).

What is not claimed. No amplification by subsampling: in asynchronous FL a
node's participation is decided by the node (battery, connectivity), not drawn
at random by the server, so the random-sampling premise of amplification does
not hold. The accountant is also worst case over nodes: it counts every flush,
because any one node could have taken part in all of them.

Numerics. For the budgets operators ask about (delta down to 1e-12, mu up to
50) the second term is exp(1600) times Phi(-57): both factors leave the double
range. Both terms are rewritten with the scaled complementary error function
erfcx(t) = exp(t^2) erfc(t), after which the large exponents cancel exactly
(see `gaussian_delta`). `rdp_epsilon` gives the classical, looser Renyi-DP
bound (Mironov 2017) as an independent cross-check of the exact curve.

Everything except `GaussianAccountant` is a pure function of floats; the
accountant only holds the two numbers (steps, sum of 1/z^2) that determine its
answer, so its checkpointed state restores the same epsilon bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from fedbus.broker.errors import ConfigError

__all__ = [
    "DEFAULT_RDP_ORDERS",
    "GaussianAccountant",
    "PrivacySpent",
    "calibrate_noise_multiplier",
    "gaussian_delta",
    "gaussian_epsilon",
    "noise_std",
    "rdp_epsilon",
]

# Renyi orders for the RDP cross-check: dense near 1 (large mu wants alpha just
# above 1) and geometric up to 4096 (tiny mu with small delta wants alpha ~ 1/mu).
DEFAULT_RDP_ORDERS: tuple[float, ...] = (
    tuple(1.0 + k / 100.0 for k in range(1, 100))
    + tuple(2.0 + k / 4.0 for k in range(0, 61))
    + tuple(float(a) for a in range(18, 65))
    + (80.0, 96.0, 128.0, 192.0, 256.0, 384.0, 512.0, 768.0, 1024.0, 2048.0, 4096.0)
)

_SQRT2 = math.sqrt(2.0)
_INV_SQRT_PI = 1.0 / math.sqrt(math.pi)
# Bisection stops once the bracket is this narrow relative to its upper end.
_RELATIVE_TOLERANCE = 1e-12
_MAX_BISECTIONS = 2_000


@dataclass(frozen=True)
class PrivacySpent:
    """The (epsilon, delta) guarantee after `steps` flushes, and the GDP mu behind it.

    epsilon is math.inf when some flush had no noise (z = 0): such a flush
    publishes a node's clipped row exactly, which no finite epsilon covers.
    """

    epsilon: float
    delta: float
    steps: int
    mu: float


# --------------------------------------------------------------------------- numerics


def _erfcx(t: float) -> float:
    """exp(t^2) erfc(t) for t >= 0, to about 1e-14 relative.

    Below t = 10 it is exp(t^2) times math.erfc; t^2 is split into an exactly
    representable square plus a small remainder so that exp() does not amplify
    the rounding error of t*t (that error would be ~t^2 ulp). From t = 10 on,
    erfc underflows soon after, and the asymptotic series
    1/(t sqrt(pi)) * sum_k (-1)^k (2k-1)!! / (2 t^2)^k is already exact to
    double precision after ~20 terms (its smallest term is ~exp(-t^2)).
    """
    if t < 10.0:
        # 12 fraction bits: t_hi has <= 16 significant bits here, so t_hi^2 is exact.
        t_hi = round(t * 4096.0) / 4096.0
        t_lo = t - t_hi
        return math.exp(t_hi * t_hi) * math.exp(t_lo * (2.0 * t_hi + t_lo)) * math.erfc(t)
    inv_two_t2 = 1.0 / (2.0 * t * t)
    term, total = 1.0, 1.0
    for k in range(1, 60):
        term *= -(2 * k - 1) * inv_two_t2
        total += term
        if abs(term) < 1e-17 * abs(total):
            break
    return total * _INV_SQRT_PI / t


def _check_mu(mu: float) -> None:
    if math.isnan(mu) or mu < 0.0:
        raise ConfigError(f"mu must be >= 0, got {mu}")


def _check_delta(delta: float) -> None:
    if not 0.0 < delta < 1.0:  # also rejects NaN
        raise ConfigError(f"delta must lie in (0, 1), got {delta}")


def gaussian_delta(epsilon: float, mu: float) -> float:
    """The smallest delta for which mu-GDP implies (epsilon, delta)-DP.

    With y = eps/mu - mu/2 and x = eps/mu + mu/2, one has
    eps - x^2/2 = -y^2/2 exactly, so
        exp(eps) Phi(-x) = 1/2 exp(-y^2/2) erfcx(x/sqrt2),
        Phi(-y)          = 1/2 exp(-y^2/2) erfcx(y/sqrt2)   (y >= 0),
    and delta = 1/2 exp(-y^2/2) (erfcx(y/sqrt2) - erfcx(x/sqrt2)): no overflow of
    exp(eps) and no underflow of Phi(-x), whatever eps and mu. For y < 0 the
    first term is above 1/2 and is evaluated directly.
    """
    if math.isnan(epsilon) or epsilon < 0.0:
        raise ConfigError(f"epsilon must be >= 0, got {epsilon}")
    _check_mu(mu)
    if mu == 0.0 or math.isinf(epsilon):
        return 0.0  # identical output distributions, or no claim at all
    if math.isinf(mu):
        return 1.0  # noiseless release: only delta = 1 holds
    y = epsilon / mu - mu / 2.0
    x = epsilon / mu + mu / 2.0
    if math.isinf(y):
        return 0.0
    scale = 0.5 * math.exp(-0.5 * y * y)
    if y >= 0.0:
        delta = scale * (_erfcx(y / _SQRT2) - _erfcx(x / _SQRT2))
    else:
        delta = 0.5 * math.erfc(y / _SQRT2) - scale * _erfcx(x / _SQRT2)
    return min(1.0, max(0.0, delta))


def _bracket_and_bisect(below: Callable[[float], bool], first: float) -> tuple[float, float]:
    """(lo, hi) around where the monotone test `below` turns false, for x >= 0.

    `below(x)` must be true for small x and false from some point on. The
    bracket starts at [0, first], doubles until `below(hi)` is false, then
    bisects to ~1e-12 relative or until lo and hi are adjacent doubles.
    """
    lo, hi = 0.0, first
    while below(hi):
        lo, hi = hi, 2.0 * hi
    for _ in range(_MAX_BISECTIONS):
        if hi - lo <= _RELATIVE_TOLERANCE * hi:
            break
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break  # adjacent doubles: nothing left to split
        if below(mid):
            lo = mid
        else:
            hi = mid
    return lo, hi


def gaussian_epsilon(delta: float, mu: float) -> float:
    """The smallest epsilon with (epsilon, delta)-DP under mu-GDP.

    delta(eps) decreases in eps, so eps is found by bracketing (doubling) and
    bisection to ~1e-12 relative. The upper end of the final bracket is
    returned: delta(result) <= delta, so rounding never understates the loss.
    """
    _check_delta(delta)
    _check_mu(mu)
    if mu == 0.0:
        return 0.0
    if math.isinf(mu):
        return math.inf
    if gaussian_delta(0.0, mu) <= delta:
        return 0.0
    _, hi = _bracket_and_bisect(lambda eps: gaussian_delta(eps, mu) > delta, 1e-6)
    return hi


def rdp_epsilon(delta: float, mu: float, orders: Sequence[float] = DEFAULT_RDP_ORDERS) -> float:
    """Epsilon from the Renyi-DP bound, a looser but independent cross-check.

    The Gaussian mechanism with mu = sensitivity/std has Renyi divergence
    alpha mu^2 / 2 at order alpha (Mironov 2017, Prop. 7), it composes by adding
    mu^2, and converts as eps = RDP(alpha) + log(1/delta)/(alpha - 1) (Prop. 3).
    Each order gives a valid guarantee; the best one over `orders` is returned.
    """
    _check_delta(delta)
    _check_mu(mu)
    if not orders:
        raise ConfigError("orders must not be empty")
    if any(not alpha > 1.0 for alpha in orders):
        raise ConfigError(f"every Renyi order must be > 1, got {list(orders)}")
    if mu == 0.0:
        return 0.0
    if math.isinf(mu):
        return math.inf
    log_inv_delta = math.log(1.0 / delta)
    return min(alpha * mu * mu / 2.0 + log_inv_delta / (alpha - 1.0) for alpha in orders)


# --------------------------------------------------------------------------- calibration


def _check_noise_multiplier(noise_multiplier: float) -> None:
    if math.isnan(noise_multiplier) or noise_multiplier < 0.0:
        raise ConfigError(f"noise_multiplier must be >= 0, got {noise_multiplier}")


def noise_std(clip: float, noise_multiplier: float) -> float:
    """Per-coordinate noise standard deviation z * C for one flush.

    Sensitivity is the clip norm C, so the noise is scaled by C; a bad clip
    would silently change the privacy guarantee, hence the checks.
    """
    if not (math.isfinite(clip) and clip > 0.0):
        raise ConfigError(f"clip must be a finite number > 0, got {clip}")
    _check_noise_multiplier(noise_multiplier)
    if math.isinf(noise_multiplier):
        raise ConfigError("noise_multiplier must be finite to draw noise")
    return noise_multiplier * clip


def _composed_mu(steps: int, noise_multiplier: float) -> float:
    """mu after `steps` flushes at one multiplier, computed as the accountant does."""
    step_mu_squared = 1.0 / (noise_multiplier * noise_multiplier)
    total = 0.0
    for _ in range(steps):
        total += step_mu_squared
    return math.sqrt(total)


def calibrate_noise_multiplier(epsilon: float, delta: float, steps: int) -> float:
    """The smallest noise multiplier z for which `steps` flushes stay within (epsilon, delta).

    T flushes at z are sqrt(T)/z-GDP, and delta(epsilon, mu) grows with mu, so
    the largest admissible mu is found by bisection and z = sqrt(T) / mu. The
    result is then nudged up until an accountant that records `steps` flushes
    at z reports at most `epsilon` for `delta` (the same float arithmetic), so
    asking for a budget never yields a report slightly over it.
    """
    if not (math.isfinite(epsilon) and epsilon >= 0.0):
        raise ConfigError(f"epsilon must be a finite number >= 0, got {epsilon}")
    _check_delta(delta)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be an integer >= 1, got {steps!r}")
    # delta(epsilon, 0) = 0 <= delta: mu = 0 is always admissible
    lo, _ = _bracket_and_bisect(lambda mu: gaussian_delta(epsilon, mu) <= delta, 1.0)
    if lo == 0.0:
        raise ConfigError(f"no finite noise multiplier reaches epsilon={epsilon}, delta={delta}")
    noise_multiplier = math.sqrt(steps) / lo
    # The accountant reports the upper end of its own bisection (up to 1e-12
    # above the exact epsilon), so step z up until that report fits too.
    while gaussian_epsilon(delta, _composed_mu(steps, noise_multiplier)) > epsilon:
        noise_multiplier *= 1.0 + 1e-12
    return noise_multiplier


# --------------------------------------------------------------------------- accountant


class GaussianAccountant:
    """Running privacy loss of the aggregator, worst case over nodes.

    The whole state is (steps, sum of 1/z^2): GDP composes by adding mu^2, so
    nothing else about the history matters, and the state is exact in floats.
    A flush without noise (z = 0) makes the sum infinite: epsilon is infinite
    from then on. A flush with z = inf releases nothing and adds 0.
    """

    def __init__(self, delta: float) -> None:
        _check_delta(delta)
        self._delta = delta
        self._steps = 0
        self._mu_squared = 0.0

    @property
    def delta(self) -> float:
        return self._delta

    def record_flush(self, noise_multiplier: float) -> None:
        """Account one model step noised with standard deviation noise_multiplier * C."""
        _check_noise_multiplier(noise_multiplier)
        if noise_multiplier == 0.0:
            self._mu_squared = math.inf
        else:
            self._mu_squared += 1.0 / (noise_multiplier * noise_multiplier)
        self._steps += 1

    def spent(self) -> PrivacySpent:
        """The (epsilon, delta) guarantee for every node after all recorded flushes."""
        mu = math.sqrt(self._mu_squared)
        return PrivacySpent(
            epsilon=gaussian_epsilon(self._delta, mu),
            delta=self._delta,
            steps=self._steps,
            mu=mu,
        )

    def to_state(self) -> dict[str, float | int]:
        """Plain values for the aggregator's checkpoint (inf when a flush had no noise)."""
        return {"steps": self._steps, "mu_squared": self._mu_squared}

    @classmethod
    def from_state(cls, state: Mapping[str, float | int], delta: float) -> GaussianAccountant:
        """Rebuild an accountant from `to_state()`; a damaged state raises ConfigError.

        delta is passed again rather than stored because it is configuration,
        not history: an operator may report the same history at another delta.
        """
        accountant = cls(delta)
        try:
            steps = state["steps"]
            mu_squared = state["mu_squared"]
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"privacy accountant state is missing a field: {exc}") from exc
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ConfigError(f"privacy state 'steps' must be an integer >= 0, got {steps!r}")
        if (
            isinstance(mu_squared, bool)
            or not isinstance(mu_squared, (int, float))
            or math.isnan(mu_squared)
            or mu_squared < 0.0
        ):
            raise ConfigError(
                f"privacy state 'mu_squared' must be a number >= 0, got {mu_squared!r}"
            )
        if steps == 0 and mu_squared != 0.0:
            raise ConfigError("privacy state has privacy loss but no steps")
        accountant._steps = steps
        accountant._mu_squared = float(mu_squared)
        return accountant
