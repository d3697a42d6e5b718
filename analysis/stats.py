"""The statistics rigd's analyses share: binomial intervals (scipy's Wilson score interval).

One definition, used by the dry run, the session report and the neural analysis, so a fraction
correct carries the same interval wherever rigd prints it.
"""

from __future__ import annotations

import math

from scipy import stats

CONFIDENCE = 0.95  #: the level of every interval rigd reports unless it says otherwise


def wilson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials (NaN, NaN when n = 0).

    scipy's ``binomtest(...).proportion_ci(method="wilson")`` (Wilson 1927; recommended over the
    Wald interval at the small n of one condition in one session: Brown, Cai & DasGupta 2001).
    """
    if n == 0:
        return (math.nan, math.nan)
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))
