"""Ray executor for the streaming build: the per-chunk work runs on Ray workers.

    gif build CORPUS --out INDEX --engine ray                     # a local Ray on 127.0.0.1
    gif build CORPUS --out INDEX --engine ray --address HOST:PORT  # an existing cluster

Each worker is a Ray actor holding one :class:`gif_core.pipeline.ChunkWorker` (its own encoder,
on a GPU when the cluster has them). The driver hands out chunks of texts, then, once it has
trained the probe on a seeded sample of the embeddings the workers returned, sends every worker
the same probe weights and hands out chunks of embeddings to label and project. Results come
back through Ray's object store and the driver writes them into the build's memory-mapped work
arrays, so workers need no shared filesystem, and a build interrupted on Ray resumes like a local
one (with either engine). At most two chunks per worker are in flight, which bounds the driver's
memory. The driver then assembles one index exactly as a local build does.

Ray is an optional dependency (``pip install 'gif-core[ray]'``); every worker must run the same
GIF version and encoder weights as the driver, which is checked before any work is handed out.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from . import __version__
from .config import EncoderConfig
from .errors import ConfigError
from .pipeline import ChunkWorker

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
IN_FLIGHT_PER_WORKER = 2


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("--engine ray needs Ray, which is not installed. Install it with "
                          "`pip install 'gif-core[ray]'`, or build with --engine local.") from exc
    return ray


def check_address(address: str) -> None:
    """Refuse a Ray address that does not accept a TCP connection within a few seconds.

    Ray's own connect retries for about a minute before it fails; this says at once which
    address did not answer. ``auto`` (the cluster this machine belongs to) is left to Ray.
    """
    if address == "auto":
        return
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    host, port = parsed.hostname, parsed.port
    if not host or not port:
        raise ConfigError(f"--address {address!r} is not HOST:PORT or ray://HOST:PORT. Give the "
                          f"address `ray start --head` printed, or drop --address for a local "
                          f"Ray.")
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ConfigError(
            f"the Ray cluster at {address!r} does not answer ({exc.strerror or exc}). Start it "
            f"with `ray start --head` on that machine and pass the address it prints, or drop "
            f"--address to run a local Ray; no index was written.") from None


class RayExecutor:
    """Runs :class:`ChunkWorker` methods on Ray actors (see the module docstring).

    Args:
        encoder_config: the encoder every worker loads.
        address: an existing cluster (``HOST:PORT``, ``ray://HOST:PORT`` or ``auto``); None starts
            a local Ray bound to 127.0.0.1, without its dashboard.
        workers: actors to start; default one per CPU of the cluster (one per GPU if it has GPUs).
    """

    name = "ray"

    def __init__(self, encoder_config: EncoderConfig, address: str | None = None,
                 workers: int | None = None):
        ray = self._ray = _import_ray()
        if workers is not None and workers < 1:
            raise ConfigError(f"--workers: expected >= 1, got {workers}. Leave it out for one "
                              f"worker per CPU.")
        if address is not None:
            check_address(address)
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)
        else:
            # workers import this very gif_core, wherever it is installed or checked out
            root = str(Path(__file__).resolve().parents[1])
            ray.init(include_dashboard=False, _node_ip_address="127.0.0.1",
                     num_cpus=workers, log_to_driver=False, logging_level=logging.WARNING,
                     runtime_env={"env_vars": {"PYTHONPATH": root}})
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        count = workers or (gpus if gpus else max(1, int(resources.get("CPU", 1))))
        actor = ray.remote(num_cpus=1, num_gpus=1 if gpus else 0)(ChunkWorker)
        self.actors = [actor.remote(encoder_config) for _ in range(count)]
        versions = set(ray.get([a.version.remote() for a in self.actors]))
        if versions != {__version__}:
            self.close()
            raise ConfigError(f"Ray workers run GIF {sorted(versions)}, the driver {__version__}. "
                              f"Install the same gif-core on every node.")
        log.info("Ray: %d workers (%d GPUs in the cluster)", count, gpus)

    def weights_sha256(self) -> str:
        shas = set(self._ray.get([a.weights_sha256.remote() for a in self.actors]))
        if len(shas) != 1:
            raise ConfigError(f"Ray workers loaded different encoder weights ({sorted(shas)}). "
                              f"Install the same encoder on every node.")
        return shas.pop()

    def _map(self, method: str, items: Iterable[tuple[int, Any]]) -> Iterator[tuple]:
        """Call ``method`` on idle actors for each item; yield (i, *result) as they finish."""
        ray = self._ray
        items = iter(items)
        idle = [a for a in self.actors for _ in range(IN_FLIGHT_PER_WORKER)]
        running: dict[Any, tuple[int, Any]] = {}
        exhausted = False
        while True:
            while idle and not exhausted:
                item = next(items, None)
                if item is None:
                    exhausted = True
                    break
                actor = idle.pop()
                running[getattr(actor, method).remote(item[1])] = (item[0], actor)
            if not running:
                return
            done, _ = ray.wait(list(running), num_returns=1)
            i, actor = running.pop(done[0])
            idle.append(actor)
            result = ray.get(done[0])
            yield (i, *(result if isinstance(result, tuple) else (result,)))

    def encode(self, chunks):
        return self._map("encode", chunks)

    def set_probe(self, *args) -> None:
        self._ray.get([a.set_probe.remote(*args) for a in self.actors])

    def fingerprint(self, chunks):
        return self._map("fingerprint", chunks)

    def close(self) -> None:
        for a in getattr(self, "actors", []):
            self._ray.kill(a)
        self._ray.shutdown()


def ray_executor(encoder_config: EncoderConfig, address: str | None = None,
                 workers: int | None = None) -> RayExecutor:
    return RayExecutor(encoder_config, address, workers)
