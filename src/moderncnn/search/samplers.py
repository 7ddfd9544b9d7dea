"""Samplers of the search: Optuna's random and TPE, and the paper's REINFORCE controller as an Optuna sampler.

EfficientNetV2 (§3.3) searches its space "with reinforcement learning (Tan et al., 2019a) or simply random
search"; MnasNet (Tan et al., 2019, §4) trains a controller by policy gradient on the reward of sampled
models. :class:`ReinforceSampler` is that controller in its simplest factorized form: one softmax policy
per choice (MnasNet's RNN controller emits the same per-stage tokens, conditioned on the previous ones;
the factorized policy drops that conditioning), updated by REINFORCE with a moving-average baseline:

    θ_c += lr · clip((R - b) / σ) · (onehot(a_c) - softmax(θ_c))       b, σ² : moving mean / variance of R

The policy is never stored: it is replayed from the completed trials in the study's storage (in order of
completion), so every worker of a study, on any machine, and a resumed search all sample from the same
controller, with nothing but Optuna's storage shared. The draw of trial ``n`` is seeded by ``(seed, n)``.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.samplers import BaseSampler, RandomSampler, TPESampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from ..errors import ConfigError

SAMPLERS = ("reinforce", "tpe", "random")
_MAX_INT_CHOICES = 256  # an int range wider than this is left to random sampling


def _choices(dist: BaseDistribution) -> tuple | None:
    """The finite list of values the policy chooses among, or None for distributions it leaves to random."""
    if isinstance(dist, CategoricalDistribution):
        return tuple(dist.choices)
    if isinstance(dist, IntDistribution) and not dist.log and (dist.high - dist.low) // dist.step < _MAX_INT_CHOICES:
        return tuple(range(dist.low, dist.high + 1, dist.step))
    return None


@dataclass
class _Policy:
    """Logits per (parameter, options) and the reward baseline, after replaying ``seen`` trials."""

    logits: dict[tuple[str, tuple], list[float]] = field(default_factory=dict)
    seen: list[int] = field(default_factory=list)  # trial numbers replayed, in order
    baseline: float | None = None
    var: float = 0.0

    def probs(self, key: tuple[str, tuple]) -> list[float]:
        z = self.logits.setdefault(key, [0.0] * len(key[1]))
        m = max(z)
        e = [math.exp(x - m) for x in z]
        s = sum(e)
        return [x / s for x in e]


class ReinforceSampler(BaseSampler):
    """REINFORCE policy-gradient controller (EfficientNetV2 §3.3 via MnasNet) as an Optuna sampler.

    ``learning_rate`` is the step on the logits per trial of unit normalized advantage; ``baseline_decay``
    the moving-average factor of the baseline and of the reward variance that normalizes the advantage
    (clipped to ±``advantage_clip``). Parameters that are not categorical (or small integer ranges) are
    drawn at random. Single-objective studies only.
    """

    def __init__(
        self,
        *,
        learning_rate: float = 0.3,
        baseline_decay: float = 0.9,
        advantage_clip: float = 3.0,
        seed: int | None = None,
    ) -> None:
        if learning_rate <= 0 or not 0 <= baseline_decay < 1 or advantage_clip <= 0:
            raise ConfigError(f"ReinforceSampler: need learning_rate > 0, 0 <= baseline_decay < 1, advantage_clip > 0; "
                              f"got {learning_rate}, {baseline_decay}, {advantage_clip}")
        self.learning_rate = learning_rate
        self.baseline_decay = baseline_decay
        self.advantage_clip = advantage_clip
        self._seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
        self._fallback = RandomSampler(seed=self._seed)
        self._policies: dict[tuple[int, int], _Policy] = {}
        self._last: tuple[tuple[int, int, int], _Policy] | None = None

    def reseed_rng(self) -> None:
        self._seed = random.SystemRandom().randrange(2**31)
        self._fallback.reseed_rng()

    # -- Optuna's interface ----------------------------------------------------------------------------
    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        self._raise_error_if_multi_objective(study)
        choices = _choices(param_distribution)
        if choices is None:
            return self._fallback.sample_independent(study, trial, param_name, param_distribution)
        if self._last is not None and self._last[0] == (id(study._storage), study._study_id, trial.number):
            pol = self._last[1]  # the policy does not change while one trial draws its parameters
        else:
            pol = self.policy(study)
            self._last = ((id(study._storage), study._study_id, trial.number), pol)
        probs = pol.probs((param_name, choices))
        key = f"{self._seed}/{trial.number}/{param_name}".encode()
        u = random.Random(zlib.crc32(key)).random()
        acc = 0.0
        for value, p in zip(choices, probs):
            acc += p
            if u < acc:
                return value
        return choices[-1]

    # -- the controller --------------------------------------------------------------------------------
    def policy(self, study: optuna.Study) -> _Policy:
        """The controller after every completed trial of ``study`` (replayed incrementally)."""
        done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
        done.sort(key=lambda t: (t.datetime_complete is None, t.datetime_complete, t.number))
        order = [t.number for t in done]
        sid = id(study._storage), study._study_id
        pol = self._policies.get(sid)
        if pol is None or order[: len(pol.seen)] != pol.seen:
            pol = _Policy()  # a trial completed out of the cached order (another worker): replay from scratch
        sign = 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0
        for t in done[len(pol.seen):]:
            self._update(pol, t, sign * float(t.value))
            pol.seen.append(t.number)
        self._policies[sid] = pol
        return pol

    def _update(self, pol: _Policy, trial: FrozenTrial, r: float) -> None:
        if pol.baseline is None:
            pol.baseline = r
            return
        adv = r - pol.baseline
        if pol.var == 0.0:
            pol.var = adv * adv
        scale = math.sqrt(pol.var) if pol.var > 0 else 1.0
        a = max(-self.advantage_clip, min(self.advantage_clip, adv / scale))
        for name, value in trial.params.items():
            choices = _choices(trial.distributions[name])
            if choices is None or value not in choices:
                continue
            key = (name, choices)
            probs = pol.probs(key)
            z = pol.logits[key]
            idx = choices.index(value)
            for i, p in enumerate(probs):
                z[i] += self.learning_rate * a * ((i == idx) - p)
        d = self.baseline_decay
        pol.baseline = d * pol.baseline + (1 - d) * r
        pol.var = d * pol.var + (1 - d) * adv * adv

    def most_likely(self, study: optuna.Study) -> dict[str, Any]:
        """The controller's current argmax point (parameters it has seen)."""
        pol = self.policy(study)
        return {name: choices[max(range(len(choices)), key=lambda i: pol.probs((name, choices))[i])]
                for (name, choices) in pol.logits}


def make_sampler(name: str, seed: int | None = None, **kwargs: Any) -> BaseSampler:
    """``reinforce`` (the paper's controller), ``tpe`` (Optuna's TPE, with the constant liar for parallel
    workers) or ``random``."""
    if name == "reinforce":
        return ReinforceSampler(seed=seed, **kwargs)
    if name == "tpe":
        return TPESampler(seed=seed, constant_liar=True, **kwargs)
    if name == "random":
        return RandomSampler(seed=seed, **kwargs)
    raise ConfigError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


def trials_to_optimum(sampler: BaseSampler, objective, optimum: dict[str, Any], *, max_trials: int,
                      space: Sequence[tuple[str, Sequence]]) -> int:
    """Trials a sampler needs until it first proposes ``optimum`` (capped at ``max_trials``) on a synthetic
    objective: a fast check that a sampler learns, with no training (tests, docs/search.md)."""
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for n in range(1, max_trials + 1):
        trial = study.ask()
        params = {name: trial.suggest_categorical(name, list(opts)) for name, opts in space}
        study.tell(trial, objective(params))
        if params == optimum:
            return n
    return max_trials
