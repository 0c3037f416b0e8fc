"""Significance of differences between two methods evaluated on the same seeds or the same examples.

  mean_ci   mean, sample std (ddof=1) and Student-t confidence interval of per-seed scores.
  paired_t  paired t-test over seeds (scipy.stats.ttest_rel): mean of a - b, its t-interval, p.
  mcnemar   McNemar's test on paired per-example correctness of two classifiers on one test set.

With one seed there is no spread to estimate: intervals and p-values are then None with a note saying so,
never a number made up from nothing.
"""

import dataclasses
from typing import Optional

import numpy as np
from scipy import stats

# Below this many discordant pairs McNemar's chi-square approximation is poor (the usual rule of thumb is
# b + c < 25), so the exact binomial test is used instead.
MCNEMAR_EXACT_BELOW = 25


def _as_1d(name: str, values) -> np.ndarray:
  v = np.asarray(values, np.float64)
  if v.ndim != 1 or v.size == 0:
    raise ValueError(f'{name} must be a non-empty 1-D sequence, got shape {v.shape}')
  if not np.isfinite(v).all():
    raise ValueError(f'{name} contain NaN or inf')
  return v


def _t_interval(mean: float, std: float, n: int, level: float):
  half = stats.t.ppf(0.5 + level / 2, n - 1) * std / np.sqrt(n)
  return float(mean - half), float(mean + half)


@dataclasses.dataclass(frozen=True)
class MeanCI:
  n: int
  mean: float
  std: Optional[float]  # sample standard deviation (ddof=1); None for n = 1
  ci_low: Optional[float]
  ci_high: Optional[float]
  level: float
  note: str = ''


def mean_ci(values, level: float = 0.95) -> MeanCI:
  """Mean and two-sided Student-t interval of `values` (e.g. one accuracy per seed).

  The interval is mean +- t_{(1+level)/2, n-1} * s / sqrt(n) with s the sample std (ddof=1). It treats the
  seeds as independent draws of the training randomness; it says nothing about test-set sampling error.
  """
  if not 0 < level < 1:
    raise ValueError(f'level must lie in (0, 1), got {level}')
  v = _as_1d('values', values)
  if v.size == 1:
    return MeanCI(1, float(v[0]), None, None, None, level, 'CI undefined: a single seed has no spread')
  std = float(v.std(ddof=1))
  return MeanCI(int(v.size), float(v.mean()), std, *_t_interval(float(v.mean()), std, v.size, level), level)


@dataclasses.dataclass(frozen=True)
class PairedT:
  n: int
  mean_a: float
  mean_b: float
  mean_diff: float  # mean of a - b
  ci_low: Optional[float]  # t-interval of the mean difference
  ci_high: Optional[float]
  t: Optional[float]
  p: Optional[float]
  alternative: str
  level: float
  note: str = ''


def paired_t(a, b, level: float = 0.95, alternative: str = 'two-sided') -> PairedT:
  """Paired t-test of a against b, where a[k] and b[k] come from the same seed (same split, same init).

  Args:
    a, b: per-seed scores of two methods, paired by position.
    level: confidence level of the (two-sided) interval of the mean difference.
    alternative: passed to scipy.stats.ttest_rel: 'two-sided', or 'greater' to test the claim a > b.

  Returns:
    A `PairedT`. With n = 1, or with every difference equal (the t statistic divides by a zero spread),
    t, p and the interval are None and `note` says why; the mean difference is still reported.
  """
  a, b = _as_1d('a', a), _as_1d('b', b)
  if a.shape != b.shape:
    raise ValueError(f'a and b must be paired (same length), got {a.size} and {b.size}')
  diff = a - b
  common = dict(
    n=int(a.size),
    mean_a=float(a.mean()),
    mean_b=float(b.mean()),
    mean_diff=float(diff.mean()),
    alternative=alternative,
    level=level,
  )
  if a.size == 1:
    return PairedT(ci_low=None, ci_high=None, t=None, p=None, note='undefined: a single pair has no spread', **common)
  std = float(diff.std(ddof=1))
  if std == 0:
    return PairedT(
      ci_low=None,
      ci_high=None,
      t=None,
      p=None,
      note='undefined: every paired difference is equal, so their spread is zero',
      **common,
    )
  res = stats.ttest_rel(a, b, alternative=alternative)
  low, high = _t_interval(float(diff.mean()), std, a.size, level)
  return PairedT(ci_low=low, ci_high=high, t=float(res.statistic), p=float(res.pvalue), **common)


@dataclasses.dataclass(frozen=True)
class McNemar:
  n: int  # examples
  only_a: int  # a correct, b wrong
  only_b: int  # a wrong, b correct
  statistic: Optional[float]  # chi-square statistic; None for the exact test
  p: float
  method: str  # 'exact-binomial', 'chi2-continuity' or 'no-discordant-pairs'


def mcnemar(correct_a, correct_b, exact: Optional[bool] = None) -> McNemar:
  """Two-sided McNemar test: do classifiers a and b err on the same examples at different rates?

  Only the discordant examples matter: b_ = #(a right, b wrong), c_ = #(a wrong, b right). Under the null
  each discordant example is a fair coin, so
    exact:       p = scipy.stats.binomtest(b_, b_ + c_, 0.5).pvalue  (two-sided)
    chi-square:  X = max(|b_ - c_| - 1, 0)^2 / (b_ + c_), p = P(chi2_1 >= X)  (Edwards' continuity
                 correction, floored at 0 so that b_ = c_ gives X = 0, p = 1).
  `exact=None` picks the exact test when b_ + c_ < MCNEMAR_EXACT_BELOW, chi-square otherwise. With no
  discordant example the two classifiers agree everywhere: p = 1.

  Args:
    correct_a, correct_b: (n,) bool, whether each classifier got example k right; same examples, same order.
    exact: force the exact (True) or chi-square (False) test.
  """
  a = np.asarray(correct_a)
  b = np.asarray(correct_b)
  if a.ndim != 1 or a.shape != b.shape:
    raise ValueError(f'correct_a and correct_b must be paired 1-D arrays, got {a.shape} and {b.shape}')
  if a.dtype != bool or b.dtype != bool:
    raise ValueError('correct_a and correct_b must be bool arrays (per-example correctness)')
  only_a = int(np.sum(a & ~b))
  only_b = int(np.sum(~a & b))
  discordant = only_a + only_b
  if discordant == 0:
    return McNemar(int(a.size), 0, 0, None, 1.0, 'no-discordant-pairs')
  if exact is None:
    exact = discordant < MCNEMAR_EXACT_BELOW
  if exact:
    p = stats.binomtest(only_a, discordant, 0.5).pvalue
    return McNemar(int(a.size), only_a, only_b, None, float(p), 'exact-binomial')
  statistic = max(abs(only_a - only_b) - 1, 0) ** 2 / discordant
  return McNemar(int(a.size), only_a, only_b, float(statistic), float(stats.chi2.sf(statistic, 1)), 'chi2-continuity')
