"""What a benchmark's statistics stand on: the Estimate every figure is reported as, the argument
checks of a sample, a confidence and a fraction, and Student's t, the normal and the binomial
distributions (NumPy has no statistics library, and tinytorch does not depend on SciPy).

Module 19 builds the intervals (percentile_ci, bootstrap_ci, t_interval, ...) on these.

    >>> round(t_quantile(0.975, 9), 3)
    2.262
    >>> Estimate(0.0021, 0.0019, 0.0025, 0.95, "order statistic").scaled(1e3).format(" ms")
    '2.1 ms [1.9, 2.5] (95% order statistic)'
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from tinytorch.core.checks import check_int

__all__ = ["Estimate", "as_samples", "binomial_cdf", "check_confidence", "check_fraction", "from_json_float",
           "json_float", "min_queries_for_percentile", "normal_quantile", "t_cdf", "t_quantile"]


def json_float(x: float):
    """x for JSON, which has no infinity or NaN: those are written as the strings 'inf', '-inf', 'nan'."""
    return x if math.isfinite(x) else repr(float(x))


def from_json_float(x):
    """The inverse of json_float: 'inf', '-inf' and 'nan' back to floats, anything else unchanged."""
    return float(x) if isinstance(x, str) and x in ("inf", "-inf", "nan") else x


@dataclass(frozen=True)
class Estimate:
    """A measured value with its confidence interval [low, high] and how it was made."""
    value: float
    low: float
    high: float
    confidence: float   # the coverage the method aims at (or guarantees, for exact methods)
    method: str         # "order statistic", "bootstrap", "t", "wilson", "early stopping", "exact", ...

    def __post_init__(self):
        if not (self.low <= self.value <= self.high) and not any(map(math.isnan, (self.low, self.value, self.high))):
            raise ValueError(f"Estimate needs low <= value <= high, got {self.low} <= {self.value} <= {self.high}")

    @property
    def width(self) -> float:
        return self.high - self.low

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high

    def scaled(self, factor: float) -> "Estimate":
        """The same estimate in other units (factor > 0), e.g. seconds -> milliseconds."""
        return Estimate(self.value * factor, self.low * factor, self.high * factor, self.confidence, self.method)

    def format(self, unit: str = "", digits: int = 3) -> str:
        return (f"{self.value:.{digits}g}{unit} [{self.low:.{digits}g}, {self.high:.{digits}g}]"
                f" ({100 * self.confidence:.0f}% {self.method})")

    def to_dict(self) -> dict:
        """A JSON-ready dict; an infinite or NaN bound is written as the string 'inf', '-inf' or 'nan'."""
        return {k: json_float(v) if isinstance(v, float) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Estimate":
        return cls(**{k: from_json_float(v) if k in ("value", "low", "high", "confidence") else v
                      for k, v in d.items()})


# --- argument checks ----------------------------------------------------------------------

def as_samples(x, what: str, minimum: int = 1) -> np.ndarray:
    """x as a 1-D float64 array of at least `minimum` finite numbers, else a ValueError naming `what`."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1 or a.size < minimum:
        raise ValueError(f"{what} must be a 1-D sequence of at least {minimum} numbers, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{what} must be finite numbers, got {a[~np.isfinite(a)][:3]}")
    return a


def check_confidence(confidence) -> None:
    """ValueError unless `confidence` is a number strictly between 0 and 1."""
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise ValueError(f"confidence must be a number between 0 and 1 (e.g. 0.95), got {confidence!r}")


def check_fraction(q, name: str = "q") -> None:
    """ValueError unless `q` is a fraction strictly between 0 and 1 (a percentile as 0.9)."""
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q < 1:
        raise ValueError(f"{name} must be a fraction strictly between 0 and 1 (0.9 for a p90), got {q!r}")


# --- distributions: Student's t, the normal and the binomial, without SciPy ----------------

def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b), by its continued fraction (modified Lentz)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast only on this side: use the symmetry
        return 1.0 - _betainc(b, a, 1.0 - x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return math.exp(log_front) * h / a


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t distribution with `df` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df!r}")
    tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with t_cdf(t, df) = p (bisection; 1e-10 relative accuracy). t_quantile(0.975, 9) = 2.262."""
    check_fraction(p, "p")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo <= 1e-10 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def normal_quantile(p: float) -> float:
    """The z with P(Z <= z) = p for a standard normal (bisection on math.erf)."""
    check_fraction(p, "p")
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p else (lo, mid)
    return 0.5 * (lo + hi)


def binomial_cdf(n: int, p: float) -> np.ndarray:
    """[P(B <= k) for k = 0..n], B ~ Binomial(n, p), computed in log space (exact enough for any n)."""
    check_int(n, "n", 0)
    k = np.arange(n + 1)
    if p <= 0.0 or p >= 1.0:
        return np.ones(n + 1) if p <= 0.0 else (k >= n).astype(float)
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1)))])  # log k!, k = 0..n
    log_comb = log_fact[n] - log_fact - log_fact[::-1]
    log_pmf = log_comb + k * math.log(p) + (n - k) * math.log1p(-p)
    return np.minimum(np.cumsum(np.exp(log_pmf - log_pmf.max())) * math.exp(log_pmf.max()), 1.0)


def min_queries_for_percentile(q: float, confidence: float = 0.99) -> int:
    """The fewest queries that can bound the q-quantile at `confidence` (all of them under the bound):
    the least n with q**n <= 1 - confidence (44 for a p90 at 99%, 459 for a p99)."""
    check_fraction(q)
    check_confidence(confidence)
    n = math.ceil(math.log(1 - confidence) / math.log(q))
    return n if q ** n <= 1 - confidence else n + 1  # guard the float rounding of the ratio
