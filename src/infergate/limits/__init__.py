"""Per-key limits: rate (rpm, tpm), concurrency and a hard monthly budget (issue 11).

`Platform.limits` is the `KeyLimiter`; see service.py for how admission and settlement work.
"""

from infergate.limits.model import KeyLimits, LimitsStatus
from infergate.limits.service import KeyLimiter

__all__ = ["KeyLimiter", "KeyLimits", "LimitsStatus"]
