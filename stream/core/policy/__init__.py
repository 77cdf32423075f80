"""Alert policy: per-user evaluations at event-time ticks in, alert decisions out (docs/contracts.md §3).

Two layers, decided independently at each evaluation of one user:

* ``ml_risk``: the model score through persistence, hysteresis and an event-time cool-down;
* ``rule:*``: daily cap, curfew and continuous use, from the user's age-band profile.

Pure: the state is passed in and updated in place, time is the evaluation tick (event time), so the
offline scorer, a replay and the live worker decide the same alerts. The state serialises to a flat
str→str mapping (one Redis hash per user) with :meth:`PolicyState.to_fields`.
"""

from stream.core.policy.config import (
    MlPolicy,
    PolicyConfig,
    PositiveMinutes,
    Probability,
    RuleProfile,
    RulesConfig,
    Seconds,
    in_window,
    load_policy_config,
    parse_curfew,
)
from stream.core.policy.decide import AlertPolicy, Decision, Evaluation, RuleInputs
from stream.core.policy.state import ML_NONE, POLICY_PREFIX, STATE_FIELDS, PolicyState

__all__ = [
    "AlertPolicy",
    "Decision",
    "Evaluation",
    "ML_NONE",
    "MlPolicy",
    "PolicyConfig",
    "POLICY_PREFIX",
    "PolicyState",
    "PositiveMinutes",
    "Probability",
    "RuleInputs",
    "RuleProfile",
    "RulesConfig",
    "STATE_FIELDS",
    "Seconds",
    "in_window",
    "load_policy_config",
    "parse_curfew",
]
