"""Training data for the attribution classifier, built from seeded simulations, and deterministic training.

For every labelled regression window of a simulation (benign ``none`` windows are the detector's business, not the
classifier's: the classifier only ever sees real regressions, ``unexplained`` included):

* **episode** = the labelled window, trimmed a little at a seeded random (a detector opens late and closes early);
* **baseline** = the clean stretch right before it in the same series (the scheduler guarantees one at least as long
  as the episode and at least 4 h);
* **metric** = one of the metrics the family is expected to move that the series can show (TTFT/ITL need streaming);
* **context** = how many other series of the same provider and region regressed at the same time;

(the windows are cut in :mod:`.training_windows`), then decompose → :func:`~.features.episode_features` →
(features, label, reason). Each window also yields a
seeded copy **as a sparser convention records it** (route columns such as the deployment, per-chunk ITL and queue
time NULL; reported on ITL when the per-call ITL rose): the simulator writes every column, real exports do not, and
the classifier must learn what a route move looks like when the moved dimension is absent. :func:`train` fits the
classifier on the examples of the training seeds plus any ``extra_examples`` (post-mortem feedback). Everything flows
from the seeds: the same :class:`SimSet` gives the same examples and a byte-identical artifact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np

from spanprism.attribution.calls_window import window_of
from spanprism.attribution.classifier.features import episode_features
from spanprism.attribution.classifier.model import DEFAULT_ARTIFACT, Attributor, fit_attributor
from spanprism.attribution.decomposition.decompose import decompose
from spanprism.attribution.evaluation.classifier_scores import evaluate, format_report
from spanprism.attribution.evaluation.training_windows import as_recorded, labelled_windows
from spanprism.attribution.simulator.presets import preset_config
from spanprism.attribution.simulator.simulate import FAMILIES, SimulationConfig, SimulationResult, simulate
from spanprism.attribution.vocabulary import LABELS


@dataclass(frozen=True)
class Example:
    """One labelled episode as the classifier sees it."""

    features: dict[str, float]
    label: str
    reason: str | None
    family: str = "feedback"
    seed: int = -1
    strength: str = ""
    metric: str = ""


@dataclass(frozen=True)
class SimSet:
    """A recipe of simulations: one :class:`SimulationConfig` per seed, everything else shared.

    With ``presets`` the seeds take the named workload presets in turn (seed i → ``presets[i % len]``, the
    preset's own days, series, rates and habits; ``families`` and ``strengths`` still apply), and the windows are
    cut like the label pass cuts them (:data:`~.training_windows.DETECTOR_BASELINE_HOURS`), so the examples carry
    the call counts a sparse series really has."""

    seeds: tuple[int, ...]
    days: float = 3.0
    series: int = 12
    rate_min: float = 0.02
    rate_max: float = 1.0
    families: tuple[str, ...] | None = None
    strengths: tuple[str, ...] | None = None
    presets: tuple[str, ...] = ()

    def configs(self) -> list[SimulationConfig]:
        if self.presets:
            return [
                replace(preset_config(self.presets[i % len(self.presets)], s), families=self.families,
                        strengths=self.strengths)
                for i, s in enumerate(self.seeds)
            ]  # fmt: skip
        return [
            SimulationConfig(
                seed=s,
                days=self.days,
                series=self.series,
                rate_min=self.rate_min,
                rate_max=self.rate_max,
                families=self.families,
                strengths=self.strengths,
            )
            for s in self.seeds
        ]

    def to_dict(self) -> dict:
        if self.presets:  # the presets fix days, series and rates
            return {
                "seeds": list(self.seeds),
                "presets": list(self.presets),
                "families": list(self.families) if self.families else None,
                "strengths": list(self.strengths) if self.strengths else None,
            }
        return {
            "seeds": list(self.seeds),
            "days": self.days,
            "series": self.series,
            "rate_min": self.rate_min,
            "rate_max": self.rate_max,
            "families": list(self.families) if self.families else None,
            "strengths": list(self.strengths) if self.strengths else None,
        }


def simulation_examples(
    result: SimulationResult, *, seed: int | None = None, augment: bool = True, detector_baseline: bool = False
) -> list[Example]:
    """Examples from every labelled regression window of one simulation (deterministic in the simulation seed).

    With ``augment`` each window also yields a copy as a sparser convention records it (:func:`as_recorded`), so
    that the classifier learns what a route move looks like when the moved dimension is not in the spans.
    ``detector_baseline``: see :func:`labelled_windows`."""
    seed = result.config.seed if seed is None else seed
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xA06]))
    out = []
    for w in labelled_windows(result, jitter_seed=seed, detector_baseline=detector_baseline):
        copies = [w, as_recorded(w, rng)] if augment else [w]
        for v in copies:
            base, epi = window_of(v.baseline), window_of(v.episode)
            feats = episode_features(decompose(base, epi, metric=v.metric, seed=seed), base, epi, v.context)
            out.append(
                Example(
                    feats,
                    v.label["label"],
                    v.label.get("reason"),
                    v.label["family"],
                    result.config.seed,
                    v.label.get("strength", ""),
                    v.metric,
                )
            )
    return out


def _examples_of(config: SimulationConfig, augment: bool = True, detector_baseline: bool = False) -> list[Example]:
    return simulation_examples(simulate(config), augment=augment, detector_baseline=detector_baseline)


def build_examples(
    simset: SimSet, *, workers: int = 1, progress: Callable[[int, int], None] | None = None, augment: bool = True
) -> list[Example]:
    """Examples of every simulation of ``simset``, in seed order (``workers`` > 1 simulates in parallel processes;
    the result does not depend on it). ``progress(done, total)`` is called after each simulation. ``augment=False``
    leaves out the sparse-convention copies (every route column and per-call signal as simulated)."""
    configs = simset.configs()
    out: list[Example] = []
    job = partial(_examples_of, augment=augment, detector_baseline=bool(simset.presets))
    if workers <= 1:
        results: Iterable[list[Example]] = map(job, configs)
    else:
        pool = ProcessPoolExecutor(workers)
        results = pool.map(job, configs)
    try:
        for done, examples in enumerate(results, 1):
            out.extend(examples)
            if progress:
                progress(done, len(configs))
    finally:
        if workers > 1:
            pool.shutdown()
    return out


#: Families left out of training: the held-out sets test that their mechanism is still recognised from the physics
#: (a deployment move is a route move along another dimension; sparse calls per prefix are another way to evict).
UNSEEN_FAMILIES: tuple[str, ...] = ("routing_change/deployment_change", "cache_eviction/ttl_expired")
_TRAIN_FAMILIES = tuple(f for f in FAMILIES if f not in UNSEEN_FAMILIES)
#: Full traffic: 40 seeds of 12 always-on series × 3 days (0.02-1 calls/s), every other family, all strengths.
FULL_TRAFFIC_TRAIN = SimSet(seeds=tuple(range(1000, 1040)), families=_TRAIN_FAMILIES)
#: Sparse traffic: the dev presets' workloads (2-200 calls an hour, idle hours, bursts, late starts, drifting own
#: sizes) on seeds 1100-1139, the presets taking turns. These seeds are disjoint from every dev (1-20), seen
#: (301-312, 401-412, 501-512, 601-612) and never-seen (701-712) evaluation seed, and the held-out presets are
#: never trained on. Windows keep the presets' real call counts (15-300 calls where the full-traffic ones have
#: thousands) and take the label pass's baseline.
SPARSE_TRAIN = SimSet(
    seeds=tuple(range(1100, 1140)),
    families=_TRAIN_FAMILIES,
    presets=("sparse", "bursty", "short_history", "drifting", "mixed"),
)
#: The shipped model's training recipe. ``SPARSE_TRAIN`` is not in it: fitted on both, the model scored lower on
#: the held-out windows (macro-F1 0.968 → 0.949) and end to end on seen seeds (README, "Not done yet").
DEFAULT_TRAIN: tuple[SimSet, ...] = (FULL_TRAFFIC_TRAIN,)
#: Held-out seeds with every family, a shifted series mix, and subtle magnitudes only (never used for training).
HOLDOUT_SETS: dict[str, SimSet] = {
    "heldout_seeds": SimSet(seeds=tuple(range(5000, 5012))),
    "shifted_mix": SimSet(seeds=tuple(range(6000, 6008)), series=16, rate_min=0.05, rate_max=2.0, days=2.5),
    "subtle_only": SimSet(seeds=tuple(range(7000, 7008)), strengths=("subtle",)),
}


def _is_recipe(train_set: SimSet | Sequence[SimSet] | Sequence[Example]) -> bool:
    return isinstance(train_set, SimSet) or (len(train_set) > 0 and all(isinstance(s, SimSet) for s in train_set))


def train(
    train_set: SimSet | Sequence[SimSet] | Sequence[Example] = DEFAULT_TRAIN,
    *,
    extra_examples: Iterable[tuple[dict[str, float], str, str | None]] = (),
    seed: int = 0,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> Attributor:
    """Fit the classifier on ``train_set`` (a recipe, several recipes or ready examples) plus ``extra_examples`` =
    ``(features, label, reason)`` triples, e.g. post-mortem labels recorded with ``spanprism label``."""
    if _is_recipe(train_set):
        sets = [train_set] if isinstance(train_set, SimSet) else list(train_set)
        examples = [e for simset in sets for e in build_examples(simset, workers=workers, progress=progress)]
        described: dict | list = sets[0].to_dict() if len(sets) == 1 else [s.to_dict() for s in sets]
    else:
        examples = list(train_set)
        described = {"examples": len(examples)}
    extra = [Example(dict(f), label, reason) for f, label, reason in extra_examples]
    meta = {
        "train_set": described,
        "unseen_families": list(UNSEEN_FAMILIES) if train_set is DEFAULT_TRAIN else [],
        "extra_examples": len(extra),
    }
    examples += extra
    return fit_attributor([e.features for e in examples], [e.label for e in examples], seed=seed, metadata=meta)


def evaluate_holdout(att: Attributor, sets: dict[str, SimSet] | None = None, *, workers: int = 1) -> dict[str, dict]:
    """Scores of ``att`` on each held-out recipe (default :data:`HOLDOUT_SETS`) and on all of them pooled."""
    reports, pooled = {}, []
    for name, simset in (sets or HOLDOUT_SETS).items():
        examples = build_examples(simset, workers=workers)
        pooled += examples
        reports[name] = evaluate(att, examples, LABELS)
    reports["pooled"] = evaluate(att, pooled, LABELS)
    return reports


def build_artifact(path: str | Path = DEFAULT_ARTIFACT, *, workers: int = 1, with_holdout: bool = True) -> Attributor:
    """Train the shipped model from :data:`DEFAULT_TRAIN`, score it on the held-out sets (kept in the metadata)
    and write the artifact. Same code and seeds → byte-identical file."""
    att = train(DEFAULT_TRAIN, workers=workers)
    if with_holdout:
        reports = evaluate_holdout(att, workers=workers)
        att.metadata["holdout"] = {name: {k: r[k] for k in _SUMMARY_KEYS} for name, r in reports.items()}
        att.metadata["holdout_sets"] = {name: s.to_dict() for name, s in HOLDOUT_SETS.items()}
    att.save(path)
    return att


_SUMMARY_KEYS = (
    "n",
    "accuracy",
    "macro_f1_core",
    "per_class",
    "labels",
    "confusion",
    "reason_accuracy",
    "reason_joint_accuracy",
    "expected_calibration_error",
    "reliability",
    "per_family_accuracy",
)


if __name__ == "__main__":  # python -m attribution.evaluation.training [workers]: rebuild the shipped artifact
    import sys

    built = build_artifact(workers=int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    for set_name, summary in built.metadata.get("holdout", {}).items():
        print(format_report(set_name, summary))
