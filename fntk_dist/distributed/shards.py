"""Width-shard actors on the Ray cluster: where they go and how they start.

The Gram's grid (gram_actors) and the regression's operator (matvec_actors) both run actors
that own a neuron range of the net, rebuild it from the seed (no weights travel) and keep a
copy of the points, which are put in the object store once. Actors have unlimited restarts and
task retries: Ray rebuilds a killed shard and runs its calls in flight again.
"""

from __future__ import annotations

import ray

from ..config import RunConfig
from ..errors import ConfigError
from .cluster import connect
from .parallelize import shard_ranges

Placed = tuple[str, dict]  # (device of each actor, its Ray resource request)


def placement(device: str, workers: int, resources: dict, field: str) -> Placed:
    """Where `workers` actors go for the device setting `field` (gram.device, regress.device).

    cpu: a share of the CPUs even on a GPU cluster; cuda: a GPU per actor, which the cluster
    must have; auto: a GPU per actor when there are enough, else CPUs.
    """
    gpus = resources.get("GPU", 0)
    if device == "cuda" and gpus < workers:
        raise ConfigError(f"{field}: cuda needs a GPU for each of the {workers} workers, "
                          f"but the Ray cluster has {gpus:g}")
    if device == "cuda" or (device == "auto" and gpus >= workers):
        return "cuda", {"num_gpus": 1}
    return "cpu", {"num_cpus": min(1.0, resources.get("CPU", 1) / workers)}


def connect_and_place(cfg: RunConfig, workers: int, field: str) -> Placed:
    """Join the cluster of dist.address (else RAY_ADDRESS, else an embedded one) and place the
    actors on it by the device setting `field`: called before a job writes anything, so a bad
    address or device leaves no half-made folder."""
    connect(cfg.dist.address, cfg.dist.connect_timeout_s, min_cpus=workers)
    section, key = field.split(".")
    return placement(getattr(getattr(cfg, section), key), workers, ray.cluster_resources(),
                     field)


def start_grid(actor: type, cfg: RunConfig, grid: tuple[int, int], d: int,
               block: int | None, placed: Placed, x_ref: ray.ObjectRef) -> list[list]:
    """A (W, R) grid of `actor`: R row groups of W actors, one per neuron range of the
    net's width, each built (model, d, neurons, block, device) and holding the points of
    x_ref when this returns, so a job times its own work alone."""
    device, request = placed
    width, rows = grid
    options = dict(max_restarts=-1, max_task_retries=-1, scheduling_strategy="SPREAD",
                   **request)
    model = cfg.model.model_dump(mode="json")
    groups = [[actor.options(**options).remote(model, d, neurons, block, device)
               for neurons in shard_ranges(cfg.model.m, width)] for _ in range(rows)]
    ray.get([s.load.remote(x_ref) for group in groups for s in group])
    return groups


def tree_sum(actors: list, refs: list[ray.ObjectRef]) -> ray.ObjectRef:
    """The reference to the sum of refs (refs[i] held by actors[i], each with an `add`
    method): actor i adds actor i + step's sum, for step = 1, 2, 4, ..., so each level moves
    one operand actor to actor through the object store and the driver fetches nothing."""
    refs = list(refs)
    step = 1
    while step < len(refs):
        for i in range(0, len(refs) - step, 2 * step):
            refs[i] = actors[i].add.remote(refs[i], refs[i + step])
        step *= 2
    return refs[0]
