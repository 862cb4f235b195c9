"""The attribution vocabulary: labels, reasons and ``contributions_ms`` keys of the DESIGN.md regression record.

Spelled once, here; the classifier, the decomposition, evaluation, alert rules, the API schemas and the CLI import
it. Each set is a ``Literal`` type (for pydantic and type checkers) and a tuple in canonical order (DESIGN.md's):

- :data:`CORE_LABELS`: the four serving mechanisms the product exists to tell apart (macro-F1 is scored on them);
- :data:`MECHANISMS`: those plus ``output_growth`` — everything the decomposition books milliseconds to;
- :data:`LABELS`: the mechanisms plus ``unexplained`` (a regression none of them accounts for);
- :data:`CONTRIBUTION_KEYS`: the mechanisms plus ``residual`` (what the named mechanisms leave unexplained);
- :data:`REASONS`: the reason sub-labels of each label (the rules that pick one live in
  :mod:`spanprism.attribution.classifier.reasons`).

Adding a label is a change of this module (plus, when it has reasons, a rule in ``classifier/reasons.py``, and a
simulator family so the classifier can learn it).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal, get_args

CoreLabel = Literal["prefill_growth", "cache_eviction", "batch_contention", "routing_change"]
Mechanism = Literal[CoreLabel, "output_growth"]
Label = Literal[Mechanism, "unexplained"]
ContributionKey = Literal[Mechanism, "residual"]

CORE_LABELS: tuple[CoreLabel, ...] = get_args(CoreLabel)
MECHANISMS: tuple[Mechanism, ...] = get_args(Mechanism)
LABELS: tuple[Label, ...] = get_args(Label)
CONTRIBUTION_KEYS: tuple[ContributionKey, ...] = get_args(ContributionKey)

#: label → its reasons, in the order the reason rules consider them; labels without reasons map to ().
REASONS: Mapping[Label, tuple[str, ...]] = MappingProxyType(
    {
        "prefill_growth": ("user_input_growth", "system_prompt_growth"),
        "cache_eviction": ("prompt_changed", "ttl_expired", "provider_evicted"),
        "batch_contention": ("queueing", "decode_slowdown"),
        "routing_change": ("region_shift", "deployment_change", "model_version_change"),
        "output_growth": (),
        "unexplained": (),
    }
)
#: Every reason of every label, in label order.
ALL_REASONS: tuple[str, ...] = tuple(reason for label in LABELS for reason in REASONS[label])


def check_reason(label: str, reason: str | None) -> None:
    """Raise ``ValueError`` unless ``label`` is known and ``reason`` is None or one of that label's reasons."""
    if label not in REASONS:
        raise ValueError(f"unknown label {label!r}; known: {', '.join(LABELS)}")
    if reason is not None and reason not in REASONS[label]:  # type: ignore[index]
        raise ValueError(f"reason {reason!r} does not belong to {label}")
