"""Results must not depend on the process that computed them: a worker process and one process doing everything
store the same records, field for field (``tests/test_workers.py``).

Python salts ``str`` hashes per process (``PYTHONHASHSEED``), so iterating a ``set`` of route values visits them in
a different order in each process, and a float sum over that order differs in its last bits. That was the one
difference between a worker's records and one process's: the ``route_tv_*`` evidence rows (and the ``tv_*``
classifier features). Here the same windows are scored in real subprocesses under different hash seeds.
"""

from __future__ import annotations

import os
import subprocess
import sys

_CHILD = r"""
import types
import numpy as np
from spanprism.attribution.classifier.windows import route_tv
from spanprism.attribution.decomposition.evidence import route_rows
from spanprism.models.schema import ROUTE_COLUMNS

rng = np.random.default_rng(7)
def window(n, values):
    routes = {d: rng.choice(values, size=n, p=rng.dirichlet(np.ones(len(values)))) for d in ROUTE_COLUMNS}
    def key(dims):
        out = np.array([""] * n, dtype=object)
        for d in dims:
            out = out + f"|{d}=" + routes[d].astype(object)
        return out
    return types.SimpleNamespace(routes=routes, route_key_over=key)

values = np.array([f"fp_{i:03d}" for i in range(60)])
base, epi = window(997, values), window(613, values[10:])
dims = list(ROUTE_COLUMNS)
print(repr([route_tv(base.routes[d], epi.routes[d]) for d in dims]))
print(repr(route_rows(base, epi, dims)))
"""


def _scores(hash_seed: int) -> str:
    env = {**os.environ, "PYTHONHASHSEED": str(hash_seed)}
    done = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_route_mix_distances_are_the_same_in_every_process():
    first = _scores(0)
    assert "route_tv_" in first
    for seed in (1, 2, 3):
        assert _scores(seed) == first, f"PYTHONHASHSEED={seed} scored the same windows differently"
