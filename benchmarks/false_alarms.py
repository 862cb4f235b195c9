"""Why the reports that match no cause were made: one row per false alarm of kept runs, then the reasons counted.

Reads the attributed databases ``generalization.py --keep-db`` leaves (``FOLDER/e2e.duckdb``, one folder per preset
and seed) and scores them as the benchmark does. Each report that matches no injected cause and no labelled ≥ 25 %
own-size step gets: the test that opened it (bucket grain, per-call raw or token-adjusted), the measured change of
its series' median prompt and output size over the episode against the 3 days before, the share of its extra
milliseconds the decomposition books to a mechanism, its length and calls, and the ``withheld`` reason if the label
pass withheld it (those are counted apart: not reported). Reasons (first that applies):

- ``own size moved ≥ 25 %``: the series' own median prompt or output size moved that much (drift or a step);
- ``growth label, own size < 25 %``: a ``prefill_growth`` / ``output_growth`` label on a smaller move;
- ``mechanism, < half explained`` / ``mechanism, ≥ half explained``: the rest, by the decomposition's share.

    .venv/bin/python benchmarks/false_alarms.py /work/cache-NAME [--cases]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

from spanprism.api.cli.evaluation import read_labels
from spanprism.attribution.evaluation.scoring import score, score_own_size
from spanprism.attribution.passes.report_gate import explained_share
from spanprism.attribution.store.records import WITHHELD, list_regressions

_SIZE_SQL = (
    "SELECT median(input_tokens), median(output_tokens), count(*) FROM llm_calls WHERE service = ?"
    " AND provider IS NOT DISTINCT FROM ? AND request_model IS NOT DISTINCT FROM ?"
    " AND operation IS NOT DISTINCT FROM ? AND start_time >= ? AND start_time < ?"
)


def _t(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def _rise(during: float | None, before: float | None) -> float:
    return during / before - 1.0 if during is not None and before else 0.0


def cases(folder: Path) -> list[dict[str, Any]]:
    """The unexplained false alarms of one kept run (withheld ones included, marked)."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "e2e.duckdb"  # a copy: the benchmark may be writing the file
        shutil.copyfile(folder / "e2e.duckdb", copy)
        con = duckdb.connect(str(copy), read_only=True)
        try:
            return _cases(con, folder)
        finally:
            con.close()


def _cases(con: duckdb.DuckDBPyConnection, folder: Path) -> list[dict[str, Any]]:
    records = list_regressions(con, detail=True, withheld=True)
    labels = read_labels(folder)
    horizon = con.execute("SELECT max(start_time) FROM llm_calls").fetchall()[0][0] + timedelta(seconds=1)
    result = score(records, labels, series_weeks=1.0, horizon=horizon)
    unexplained = set(score_own_size(records, labels, result.false_alarm_ids, horizon=horizon).unexplained_ids)
    rows = []
    for r in records:
        if r["id"] not in unexplained:
            continue
        s = r["series"]
        start, end = _t(r["start"]), _t(r["end"]) if r["end"] else horizon
        key = [s["service"], s["provider"], s["model"], s["operation"]]
        di, do, n = con.execute(_SIZE_SQL, [*key, start, end]).fetchall()[0]
        bi, bo, _ = con.execute(_SIZE_SQL, [*key, start - timedelta(days=3), start]).fetchall()[0]
        det = next((e for e in r["evidence"] if e.get("signal") == "detection"), {})
        test = det.get("test", "?")
        test = f"bucket {det.get('grain_s')} s" if test == "bucket_cusum" else test
        withheld = next((e["reason"] for e in r["evidence"] if e.get("signal") == WITHHELD), None)
        share = explained_share(r["contributions_ms"], (r["observed"] or 0.0) - (r["baseline"] or 0.0))
        rows.append({
            "run": folder.name, "service": s["service"], "metric": r["metric"], "change_pct": r["change_pct"],
            "label": r["label"], "test": test, "confirm_z": det.get("confirm_z"),
            "hours": (end - start).total_seconds() / 3600,
            "calls": n, "input_rise": _rise(di, bi), "output_rise": _rise(do, bo), "explained": share,
            "withheld": withheld,
        })  # fmt: skip
    return rows


def reason(case: dict[str, Any]) -> str:
    """The first reason of the module docstring that applies."""
    if max(case["input_rise"], case["output_rise"]) >= 0.25:
        return "own size moved ≥ 25 %"
    if case["label"] in ("prefill_growth", "output_growth"):
        return "growth label, own size < 25 %"
    share = case["explained"]
    return "mechanism, < half explained" if share is not None and share < 0.5 else "mechanism, ≥ half explained"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the --out folder of a generalization.py --keep-db run")
    parser.add_argument("--cases", action="store_true", help="print every case, not only the counts")
    args = parser.parse_args()
    rows = [c for db in sorted(args.out.glob("*/e2e.duckdb")) for c in cases(db.parent)]
    if args.cases:
        for c in rows:
            share = "?" if c["explained"] is None else f"{c['explained']:+.2f}"
            print(f"{c['run'][:20]:20s} {c['service'][:16]:16s} {c['metric']:12s} {c['change_pct']:+5.0f}% "
                  f"{c['label'][:14]:14s} {c['test'][-22:]:22s} z={c['confirm_z']} {c['hours']:5.1f} h {c['calls']:5d} "
                  f"calls  input {c['input_rise']:+.2f} output {c['output_rise']:+.2f}  explained {share}"
                  f"{'  withheld: ' + c['withheld'] if c['withheld'] else ''}")  # fmt: skip
    reported = [c for c in rows if not c["withheld"]]
    print(f"unexplained false alarms: {len(reported)} reported, {len(rows) - len(reported)} withheld")
    groups = (("reason", reason), ("test", lambda c: c["test"].split(" ")[0]), ("label", lambda c: c["label"]))
    for title, key in groups:
        print(f"by {title}:")
        for name, count in Counter(key(c) for c in reported).most_common():
            print(f"  {count:4d}  {name}")


if __name__ == "__main__":
    main()
