"""Where a persistence scan's units run: in this process (`Local`), or on Ray workers (`RayPool`).

A scan (`gremlinkit.experiments.persistence.scan`) is planned once, in this process (the driver):
its prompts and every intervention, cut into units of ``chunk_size`` interventions of one model
(`persistence.Unit`). Units are independent, and a unit's rows depend on its key alone (its noise
streams come from the prompt and position, not the worker or the order), so a scan spreads over
workers without changing a bit of its table, at the same number of torch threads per worker.
Across thread counts, float sums run in another order and values agree to about 1e-6.

The driver writes each unit's rows atomically, as they come back, to one file per unit; a rerun
skips the units on disk. On Ray, each worker is an actor that holds ``threads`` CPUs (and ``gpus``
GPUs), computes with as many torch threads, loads each model once and keeps it between units. A
worker that dies (killed, or out of memory) is restarted by Ray (``max_restarts``) and its units
are retried (``max_task_retries``); nothing is written until a unit's rows arrive, so no row is
lost or written twice. A unit that raises stops the scan with an error naming the unit, the worker
and the worker's traceback.

By default the pool starts a local Ray cluster inside the call (``ray.init(num_cpus=...)``) and
stops it at the end; ``address`` joins a running cluster instead ("auto", "HOST:PORT" or
"ray://HOST:PORT").
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import time
from collections import OrderedDict, defaultdict, deque
from typing import Any

from gremlinkit.errors import ConfigError, GremlinkitError
from gremlinkit.params import check_choice, check_range
from gremlinkit.results import write_table

log = logging.getLogger(__name__)
BACKENDS = ("local", "ray")
MAX_SUBJECTS = 4  # models a worker keeps loaded at once (the least recently used one goes first)
IN_FLIGHT = 2  # units queued per worker: the next one is pickled and sent while one computes
RETRIES = 3  # restarts of a dead worker, and retries of its units
CONNECT_TIMEOUT_S = 5.0


class WorkerError(GremlinkitError):
    """A unit failed on a worker: the message names the unit and holds the worker's traceback."""


@contextlib.contextmanager
def torch_threads(n: int):
    """Compute with ``n`` torch threads inside the block (0: leave torch's setting as it is)."""
    import torch

    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class _Subjects:
    """Loaded subjects by (model, SAE, device, dtype), the least recently used dropped past ``limit``."""

    def __init__(self, given: dict | None = None, limit: int = MAX_SUBJECTS):
        self.given, self.limit, self.loaded = dict(given or {}), limit, OrderedDict()

    def get(self, cfg, model: str, given: dict | None = None):
        from gremlinkit.experiments import persistence

        for pool in (given or {}, self.given):
            if model in pool:
                return pool[model]
        key = (model, cfg.sae_name(), cfg.device, cfg.dtype)
        if key not in self.loaded:
            self.loaded[key] = persistence.load_subject(cfg, model)
            while len(self.loaded) > self.limit:
                self.loaded.popitem(last=False)
        self.loaded.move_to_end(key)
        return self.loaded[key]


class Local:
    """Run units one after another in this process, with ``threads`` torch threads (0: as set)."""

    def __init__(self, subjects: dict | None = None, threads: int = 0):
        check_range("threads", threads, 0, 1024)
        self.subjects, self.threads = _Subjects(subjects), threads

    def __enter__(self) -> "Local":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def preload(self, cfg, models: list[str]) -> None:
        """Load ``models`` now, as ``cfg`` reads them (those given at construction are kept)."""
        for model in models:
            self.subjects.get(cfg, model)

    def run(self, plan, units: list, bar, subjects: dict | None = None) -> None:
        """Compute and write each of ``units`` of ``plan``; ``subjects`` are loaded models to use."""
        from gremlinkit.experiments import persistence

        with torch_threads(self.threads):
            for unit in units:
                subject = self.subjects.get(plan.cfg, unit.model, subjects)
                write_table(persistence.run_unit(subject, plan.cfg, plan.prompts, unit, plan.chunk(unit),
                                                 plan.values), plan.path(unit))
                bar.update(1)


class ScanWorker:
    """A Ray actor's state: the models it has loaded, kept between units."""

    def __init__(self, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.subjects = _Subjects()

    def pid(self) -> int:
        return os.getpid()

    def load(self, cfg, models: list[str]) -> int:
        """Load ``models`` as ``cfg`` reads them, before any unit needs them; returns the pid."""
        for model in models:
            self.subjects.get(cfg, model)
        return os.getpid()

    def run_unit(self, shared: tuple, unit, chunk: list) -> tuple[Any, dict]:
        """The unit's rows, and where and how fast they were computed."""
        from gremlinkit.experiments import persistence

        cfg, prompts, values = shared
        t0 = time.perf_counter()
        table = persistence.run_unit(self.subjects.get(cfg, unit.model), cfg, prompts, unit, chunk, values)
        return table, {"pid": os.getpid(), "node": socket.gethostname(), "seconds": time.perf_counter() - t0}


def check_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail at once, naming ``address``, when nothing answers there (Ray itself waits minutes)."""
    if address in ("", "auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"parameter address={address!r}: use 'auto', 'HOST:PORT' or 'ray://HOST:PORT'")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ConfigError(f"parameter address={address!r}: no Ray cluster answers there ({e}); start one with "
                          "`ray start --head`, or leave address empty for a local cluster") from None


class RayPool:
    """``workers`` Ray actors, each holding ``threads`` CPUs (computing with as many torch threads)
    and ``gpus`` GPUs. Use it as a context manager: it starts (or joins) the cluster and the actors
    on entry, and stops what it started on exit."""

    def __init__(self, workers: int = 2, address: str = "", threads: int = 1, gpus: float = 0.0):
        check_range("workers", workers, 1, 1024)
        check_range("threads", threads, 1, 1024)
        check_range("gpus_per_worker", gpus, 0, 64)
        check_address(address)
        self.workers, self.address, self.threads, self.gpus = workers, address, threads, gpus
        self.actors: list = []
        self._started = False

    def __enter__(self) -> "RayPool":
        import ray

        if not ray.is_initialized():
            opts = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
            if self.address:
                try:
                    ray.init(address=self.address, **opts)
                except ConnectionError as e:
                    raise ConfigError(f"parameter address={self.address!r}: no Ray cluster answers there ({e}); "
                                      "start one with `ray start --head`, or leave address empty for a local "
                                      "cluster") from None
            else:
                ray.init(num_cpus=self.workers * self.threads, num_gpus=int(round(self.workers * self.gpus)), **opts)
            self._started = True
        actor = ray.remote(ScanWorker).options(num_cpus=self.threads, num_gpus=self.gpus, max_restarts=RETRIES,
                                               max_task_retries=RETRIES)
        self.actors = [actor.remote(self.threads) for _ in range(self.workers)]
        return self

    def __exit__(self, *exc) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []
        if self._started:
            ray.shutdown()
            self._started = False

    def pids(self) -> list[int]:
        """Each worker's process id, in worker order."""
        import ray

        return ray.get([a.pid.remote() for a in self.actors])

    def preload(self, cfg, models: list[str]) -> None:
        """Every worker loads ``models`` now (each keeps up to `MAX_SUBJECTS`), so that the first
        units do not wait for them and a model that cannot load fails before any unit runs."""
        import ray

        ray.get([a.load.remote(cfg, models) for a in self.actors])

    def run(self, plan, units: list, bar, subjects: dict | None = None) -> None:
        """Hand ``units`` out to the workers, ``IN_FLIGHT`` at a time each; write each unit's rows
        as they come back. ``subjects`` are ignored: each worker loads its own."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        if not self.actors:
            raise GremlinkitError("RayPool.run needs the pool started: use `with RayPool(...) as pool:`")
        shared = ray.put((plan.cfg, plan.prompts, plan.values))  # sent once, not with every unit
        queue, pending = deque(units), {}
        done = defaultdict(lambda: {"units": 0, "interventions": 0, "seconds": 0.0})

        def submit(i: int) -> None:
            unit = queue.popleft()
            pending[self.actors[i].run_unit.remote(shared, unit, plan.chunk(unit))] = (unit, i)

        for i in range(len(self.actors)):
            for _ in range(IN_FLIGHT):
                if queue:
                    submit(i)
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            unit, i = pending.pop(ref)
            try:
                table, info = ray.get(ref)
            except (RayTaskError, RayActorError) as e:
                trace = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # Ray colours the worker's traceback
                raise WorkerError(f"unit {unit.key} failed on worker {i}:\n{trace}") from None
            write_table(table, plan.path(unit))
            stats = done[i]
            stats["units"] += 1
            stats["interventions"] += len(plan.chunk(unit))
            stats["seconds"] += info["seconds"]
            bar.update(1)
            bar.set_postfix_str(" ".join(f"w{k}:{s['interventions'] / s['seconds']:.0f}/s"
                                         for k, s in sorted(done.items())))
            if queue:
                submit(i)
        for i, s in sorted(done.items()):
            log.info("worker %d: %d units, %d interventions in %.1f s (%.1f interventions/s)", i, s["units"],
                     s["interventions"], s["seconds"], s["interventions"] / max(s["seconds"], 1e-9))


def runner(backend: str = "local", workers: int = 2, address: str = "", threads: int = 0,
           gpus_per_worker: float = 0.0, subjects: dict | None = None) -> Local | RayPool:
    """The runner a backend names, checked before anything starts; use it as a context manager.
    ``threads``: torch threads per worker; 0 keeps this process's setting locally, and gives each
    Ray worker one."""
    check_choice("backend", backend, BACKENDS)
    if backend == "local":
        return Local(subjects, threads)
    return RayPool(workers, address, threads or 1, gpus_per_worker)
