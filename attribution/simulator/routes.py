"""The routes of a simulated series: where its calls go (region, host, deployment, response snapshot) and how fast.

:func:`make_routes` draws a series' active routes (weighted) and its *standby* routes (far region, other deployment,
next snapshot) that only routing episodes send traffic to.
"""

from __future__ import annotations

import numpy as np

from spanprism.attribution.simulator.physics import Route
from spanprism.attribution.simulator.providers import ModelOption, ProviderSpec


def _hex(rng: np.random.Generator, n: int) -> str:
    return "".join(f"{b:02x}" for b in rng.integers(0, 256, size=(n + 1) // 2))[:n]


def _route(
    prov: ProviderSpec,
    rng: np.random.Generator,
    region: str | None,
    deployment: str | None,
    snapshot: str,
    name: str,
    *,
    network: float,
    slow: tuple[float, float],
    standby: bool,
) -> Route:
    if prov.name == "azure.ai.openai":
        address = f"{deployment or 'llm'}-{region}.openai.azure.com"
    elif prov.name == "aws.bedrock":
        address = f"bedrock-runtime.{region}.amazonaws.com"
    elif prov.name == "gcp.vertex_ai":
        address = f"{region}-aiplatform.googleapis.com"
    else:
        address = {"openai": "api.openai.com", "anthropic": "api.anthropic.com"}[prov.name]
    fingerprint = f"fp_{_hex(rng, 10)}" if prov.name in ("openai", "azure.ai.openai") else None
    return Route(
        name=name,
        region=region,
        server_address=address,
        deployment=deployment,
        response_model=snapshot,
        system_fingerprint=fingerprint,
        network_ms=network,
        prefill_mult=float(rng.uniform(*slow)),
        itl_mult=float(rng.uniform(*slow)),
        queue_ms=float(rng.uniform(5.0, 30.0)),
        standby=standby,
    )


def make_routes(
    prov: ProviderSpec, model: ModelOption, rng: np.random.Generator
) -> tuple[tuple[Route, ...], tuple[float, ...]]:
    """Active routes (1-3, weighted) and standby routes (far region, other deployment, next snapshot)."""
    n_active = int(rng.integers(1, 4))
    regions = list(prov.regions) if prov.regions else [None]
    # Most series of a provider sit in its first ("home") region, so a regional incident can hit several at once.
    home = regions[0] if rng.random() < 0.7 else regions[int(rng.integers(0, len(regions)))]
    others = [r for r in regions if r != home]
    dep = f"{model.request_model.split('.')[-1].split(':')[0]}-prod" if prov.deployments else None
    snap = model.snapshots[0]

    def route(name: str, slow: tuple[float, float], *, region: str | None = home, network: float | None = None,
              deployment: str | None = dep, snapshot: str = snap) -> Route:  # fmt: skip
        """One route of this series; ``network`` None: the primary route's (same host, or same region)."""
        near = routes[0].network_ms if network is None else network
        return _route(prov, rng, region, deployment, snapshot, name, network=near, slow=slow,
                      standby=name.startswith("standby"))  # fmt: skip

    # The keyword arguments are drawn left to right before _route draws its own: the order of the draws is the seed's.
    routes: list[Route] = [route("primary", (0.95, 1.05), network=float(rng.uniform(5, 40)))]
    for i in range(1, n_active):
        if others:  # a second region: farther, ~+20-80 ms
            region = others.pop(int(rng.integers(0, len(others))))
            routes.append(route(f"active{i}", (0.95, 1.15), region=region, network=float(rng.uniform(25, 120))))
        else:  # providers without regions: several backends (fingerprints) behind one host
            routes.append(route(f"active{i}", (0.95, 1.1)))
    share = rng.dirichlet(np.full(len(routes), 2.0))
    share = np.sort(share)[::-1]
    weights = [float(x) for x in share]
    if others:  # far region for region shifts: cross-continent RTT, older/busier hardware
        far = others[int(rng.integers(0, len(others)))]
        routes.append(route("standby_region", (1.1, 1.6), region=far, network=float(rng.uniform(90, 200))))
    if prov.deployments:  # another deployment in the home region: e.g. standard vs provisioned capacity
        routes.append(route("standby_deployment", (1.3, 2.0), deployment=f"{dep}-std2"))
    if len(model.snapshots) > 1:  # the alias moves to a new snapshot with a different speed
        routes.append(route("standby_snapshot", (1.25, 1.8), snapshot=model.snapshots[1]))
    weights += [0.0] * (len(routes) - len(weights))
    return tuple(routes), tuple(weights)
