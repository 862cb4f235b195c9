"""Simulator output: one series' numpy columns -> an ``llm_calls`` Arrow table, and its episodes -> labels."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spanprism.attribution.simulator.catalog import SeriesSpec
from spanprism.attribution.simulator.habits import DAY, SizeStep
from spanprism.attribution.simulator.physics import mix64
from spanprism.attribution.simulator.providers import PROVIDERS
from spanprism.attribution.simulator.scenarios import FAMILY_SPECS, Episode
from spanprism.attribution.simulator.series import SeriesCalls
from spanprism.attribution.simulator.table import coded, constant, hex_ids, hex_of_keys, masked, uuid_ids
from spanprism.models.schema import LLM_CALLS_SCHEMA, conform

_RESPONSE_ID = {"openai": "chatcmpl-", "azure.ai.openai": "chatcmpl-", "anthropic": "msg_", "gcp.vertex_ai": ""}
_REQUEST_ID = {"openai": "req_", "anthropic": "req_"}


def iso(epoch_s: float, t: float) -> str:
    """ISO-8601 UTC with a Z suffix."""
    return datetime.fromtimestamp(epoch_s + t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _prompt_keys(spec: SeriesSpec, c: SeriesCalls) -> pa.Array:
    """``template@vN`` (N+1 once a system prompt grew), ``~k`` for a fan-out variant, ``+hash`` for a per-call one."""
    ver0 = 1 + spec.salt % 7
    n_var = int(c.fx.variant.max()) + 1 if c.fx.variant.size else 1
    values = [f"{spec.template}@v{ver0 + s}" + (f"~{v:03d}" if v else "") for s in (0, 1) for v in range(n_var)]
    codes = c.fx.sys_version * n_var + c.fx.variant
    uniq = np.flatnonzero(c.fx.unique_prefix)
    if uniq.size:
        hashes = mix64(spec.salt, uniq)
        values += [f"{values[int(codes[i])]}+{int(h) & 0xFFFFFFFF:08x}" for i, h in zip(uniq, hashes, strict=True)]
        codes = codes.copy()
        codes[uniq] = len(values) - uniq.size + np.arange(uniq.size)
    return coded(codes, values)


def _tenants(spec: SeriesSpec, n: int, rng: np.random.Generator) -> pa.Array:
    if spec.tenants <= 0:
        return constant(None, n)
    weights = 1.0 / np.arange(1, spec.tenants + 1) ** 1.1  # a few big customers, a long tail
    codes = rng.choice(spec.tenants, size=n, p=weights / weights.sum())
    return coded(codes, [f"tenant-{k + 1:03d}" for k in range(spec.tenants)])


def _null_where(arr: pa.Array, mask: np.ndarray) -> pa.Array:
    return pc.if_else(pa.array(mask), pa.nulls(len(arr), arr.type), arr)


def series_table(spec: SeriesSpec, c: SeriesCalls, epoch_s: float, rng: np.random.Generator) -> pa.Table:
    """The series' calls as a table conforming to ``LLM_CALLS_SCHEMA``."""
    n = c.t.size
    prov = PROVIDERS[spec.provider]
    err, stream = c.error, spec.streaming
    no_timing = err | (not stream)
    rt = spec.routes
    resp_prefix = _RESPONSE_ID.get(spec.provider)
    response_id = constant(None, n) if resp_prefix is None else _null_where(hex_ids(rng, n, 24, resp_prefix), err)
    if spec.provider in _REQUEST_ID:
        request_id = hex_ids(rng, n, 32 if spec.provider == "openai" else 24, _REQUEST_ID[spec.provider])
    elif spec.provider in ("azure.ai.openai", "aws.bedrock"):
        request_id = uuid_ids(rng, n)
    else:
        request_id = constant(None, n)
    finish = np.where(c.length_hit, 1, 0)
    cols = {
        "trace_id": hex_ids(rng, n, 32),
        "span_id": hex_ids(rng, n, 16),
        # Most LLM calls run inside an application span; ~10% are roots (scripts, cron jobs).
        "parent_span_id": _null_where(hex_ids(rng, n, 16), rng.random(n) < 0.1),
        "response_id": response_id,
        "provider_request_id": request_id,
        "service": constant(spec.service, n),
        "tenant": _tenants(spec, n, rng),
        "operation": constant(spec.operation, n),
        "provider": constant(spec.provider, n),
        "request_model": constant(spec.request_model, n),
        "response_model": coded(c.route, [r.response_model for r in rt]),
        "system_fingerprint": coded(c.route, [r.system_fingerprint for r in rt]),
        "server_address": coded(c.route, [r.server_address for r in rt]),
        "region": coded(c.route, [r.region for r in rt]),
        "deployment": coded(c.route, [r.deployment for r in rt]),
        "prompt_key": _prompt_keys(spec, c),
        "start_time": pa.array(np.round((epoch_s + c.t) * 1e6).astype(np.int64), type=pa.int64()).cast(
            LLM_CALLS_SCHEMA.field("start_time").type
        ),
        "duration_ms": pa.array(np.round(c.duration, 3)),
        "ttft_ms": masked(np.round(c.ttft, 3), no_timing, pa.float64()),
        "decode_ms": masked(np.round(c.decode, 3), no_timing, pa.float64()),
        "itl_ms": masked(np.round(c.itl, 3), no_timing | (c.output < 2), pa.float64()),
        "itl_p95_ms": masked(np.round(c.itl_p95, 3), no_timing | (c.output < 2), pa.float64()),
        "streaming": pa.array(np.full(n, stream)),
        "status": coded(err.astype(np.int32), ["ok", "error"]),
        "error_type": coded(np.where(err, c.error_kind, -1), list(prov.error_types)),
        "finish_reason": coded(np.where(err, -1, finish), list(prov.finish)),
        "input_tokens": masked(c.input_tokens, err, pa.int64()),
        "cache_read_tokens": masked(c.cache_read, err, pa.int64()),
        "cache_write_tokens": masked(c.cache_write, err | (not spec.reports_cache_write), pa.int64()),
        "uncached_input_tokens": masked(c.input_tokens - c.cache_read, err, pa.int64()),
        "output_tokens": masked(c.output, err, pa.int64()),
        "source_convention": constant("otel_semconv", n),
        "span_name": constant(f"{spec.operation} {spec.request_model}", n),
        "server_port": pa.array(np.full(n, 443, np.int32)),
        "session_id": hex_of_keys(c.session_key) if spec.kind == "chat" else constant(None, n),
    }
    return conform(pa.table(cols))


def _window_stats(
    spec: SeriesSpec, c: SeriesCalls, lo: float, hi: float, quiet: bool = False
) -> dict[str, float | int | None]:
    """Calls and percentiles in [lo, hi); ``quiet`` keeps only calls outside every episode."""
    sel = (c.t >= lo) & (c.t < hi)
    if quiet:
        sel &= c.fx.episode < 0
    ok = sel & ~c.error

    def q(x: np.ndarray, p: float) -> float | None:
        return round(float(np.percentile(x, p)), 3) if x.size else None

    out: dict[str, float | int | None] = {"calls": int(sel.sum()), "e2e_p95_ms": q(c.duration[ok], 95)}
    if spec.streaming:
        out["ttft_p95_ms"] = q(c.ttft[ok], 95)
        out["itl_p95_ms"] = q(c.itl_p95[ok & (c.output >= 2)], 95)
    out["uncached_input_p50"] = q((c.input_tokens - c.cache_read)[ok], 50)
    out["cache_read_p50"] = q(c.cache_read[ok], 50)
    out["output_p50"] = q(c.output[ok], 50)
    return out


def episode_label(spec: SeriesSpec, c: SeriesCalls, ep: Episode, epoch_s: float, before_s: float | None = None) -> dict:
    """The JSON-serialisable ground-truth record of one episode (see ``simulate`` for the contract).

    ``observed.before`` is the equal-length window before the onset, or with ``before_s`` the calls outside every
    episode in the ``max(before_s, duration)`` before it (idle hours can leave the equal-length window empty).
    """
    fam = FAMILY_SPECS[ep.family]
    metrics = [m for m in fam.metrics if spec.streaming or m == "e2e_p95_ms"]
    if fam.label != "none" and not metrics:
        metrics = ["e2e_p95_ms"]
    dur = ep.end_s - ep.start_s
    params = ", ".join(f"{k}={v}" for k, v in sorted(ep.params.items()))
    shape = "step" if ep.ramp_s == 0 else f"ramp over {ep.ramp_s / 60:.0f} min"
    notes = (
        f"driver: {fam.driver}. {ep.strength} ({shape})"
        f"{'; ' + params if params else ''}; {'streaming' if spec.streaming else 'non-streaming'} series"
    )
    return {
        "episode_id": ep.episode_id,
        "series": spec.key,
        "family": ep.family,
        "label": fam.label,
        "reason": fam.reason,
        "start": iso(epoch_s, ep.start_s),
        "end": iso(epoch_s, ep.end_s),
        "magnitude": float(ep.magnitude),
        "strength": ep.strength,
        "ramp_s": float(ep.ramp_s),
        "expected_metrics": metrics,
        "notes": notes,
        "params": {k: v for k, v in ep.params.items()},
        "observed": {
            "before": _window_stats(spec, c, ep.start_s - dur, ep.start_s)
            if before_s is None
            else _window_stats(spec, c, ep.start_s - max(dur, before_s), ep.start_s, quiet=True),
            "during": _window_stats(spec, c, ep.start_s, ep.end_s),
        },
    }


#: What a report explained by an own-size step should be labelled.
STEP_LABEL = {"input": "prefill_growth", "output": "output_growth"}
#: The labelled window of a step: its ramp plus this much (the change is persistent; its onset is what a detector
#: can place).
STEP_WINDOW_S = 3600.0


def step_label(spec: SeriesSpec, c: SeriesCalls, step: SizeStep, epoch_s: float) -> dict:
    """The ground-truth record of one own-size step (``kind = "own_size_change"``, ``label = "none"``).

    It is no injected cause (``label`` stays ``none``, so recall and the confusion matrix ignore it), but a report
    overlapping it is explained, and right when labelled ``expected_label``. ``observed`` compares the day before
    with the day after the ramp, calls inside episodes left out.
    """
    end = step.start_s + step.ramp_s + STEP_WINDOW_S
    after = step.start_s + step.ramp_s
    return {
        "kind": "own_size_change",
        "episode_id": step.step_id,
        "series": spec.key,
        "family": f"own_size/{step.token}_step",
        "label": "none",
        "reason": f"own_{step.token}_step",
        "expected_label": STEP_LABEL[step.token],
        "token": step.token,
        "change": step.change,
        "start": iso(epoch_s, step.start_s),
        "end": iso(epoch_s, end),
        "magnitude": abs(step.change),
        "strength": "step",
        "ramp_s": float(step.ramp_s),
        "expected_metrics": [],
        "notes": f"own {step.token} size x {1 + step.change:.2f} from then on (persistent)",
        "params": {},
        "observed": {
            "before": _window_stats(spec, c, step.start_s - DAY, step.start_s, quiet=True),
            "during": _window_stats(spec, c, after, after + DAY, quiet=True),
        },
    }
