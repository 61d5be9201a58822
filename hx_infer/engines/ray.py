"""`hx-infer run --engine ray`: the local engine's stages mapped onto Ray Data.

    driver: plan_jobs (listing, glob, name collisions, resume skips), CHUNK jobs at a time
      -> ray.data.from_items          rows {src, path, rel} (file names as bytes)
      -> map_batches(_decode)         CPU tasks: PhotoStages.decode   x [N, 3, S, S] float32
      -> map_batches(_Infer)          actor pool, model loaded once per actor, num_gpus/num_cpus
                                      per actor: backend.infer        out [N, C, S, S] float32
      -> map_batches(_finish)         CPU tasks: PhotoStages.finish (un-letterbox, refine, encode,
                                      atomic write under OUTPUT/<kind>/<rel>)
      -> driver: one record per photo {src, reason, warning} -> Outcomes -> the local engine's report

Every stage calls the same functions as the local engine, so each photo's files are the same
bytes (the backends give a photo the same output whatever else shares its batch).

On a cluster, every node must see INPUT and OUTPUT at the same paths (shared storage: paths are
made absolute on the driver) and have the same hx and model folder installed at the same path.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import ray
import ray.data

from ..backends.base import BackendError, BackendHandle, BackendSpec, Device, default_batch_size
from ..compose import Background
from ..errors import ConfigError, EngineError
from ..io.video import is_video_name
from ..model import ModelDir, ModelError
from ..run.config import RunConfig
from ..run.claim import claim_output
from ..run.outcomes import Outcomes, finish_report
from ..run.photos import Decoded, PhotoStages
from ..run.plan import Failed, Job, Skipped, plan_jobs

# Jobs per Ray Data execution. The driver holds one chunk's file names (about 300 bytes a photo),
# so memory stays bounded on a 10^7-photo archive; each chunk costs one actor-pool start (a
# model load per actor), a few seconds against the minutes a chunk takes.
CHUNK = 100_000
FREE_CPUS = 1  # kept out of the actor pool for the decode and write tasks (else the run hangs)
# A video is one long sequential job with state from frame to frame (temporal smoothing, one
# encoder): nothing to spread over actors. The local engine runs them.
NO_VIDEOS = "a video; --engine ray runs photos only (run videos with --engine local)"


@dataclass(frozen=True)
class ActorPlan:
    """How many inference actors, and what each one holds."""

    actors: int
    gpus_per_actor: float
    cpus_per_actor: float

    @property
    def threads(self) -> int:
        """CPU threads for the backend: the actor's share, so actors do not fight over cores."""
        return max(1, int(self.cpus_per_actor))


def plan_actors(cluster_cpus: float, cluster_gpus: float, actors: int | None = None,
                gpus_per_actor: float | None = None, cpus_per_actor: float | None = None) -> ActorPlan:
    """Size the actor pool so that it can be scheduled and leaves CPUs for decoding and writing.

    Defaults: one GPU per actor when the cluster has GPUs (else none), one CPU per actor, and as
    many actors as the GPUs allow, or as the CPUs allow after FREE_CPUS. A pool that takes every
    CPU starves the decode tasks and Ray Data waits forever; one that asks for more GPUs than
    there are never starts: both are refused here, naming the option.
    """
    gpus = (1.0 if cluster_gpus >= 1 else 0.0) if gpus_per_actor is None else float(gpus_per_actor)
    cpus = 1.0 if cpus_per_actor is None else float(cpus_per_actor)
    if gpus < 0:
        raise ConfigError(f"--gpus-per-actor must be 0 or more, got {gpus:g}")
    if cpus <= 0:
        raise ConfigError(f"--cpus-per-actor must be more than 0, got {cpus:g}")
    if actors is not None and actors < 1:
        raise ConfigError(f"--actors must be at least 1, got {actors}")
    if gpus > cluster_gpus:
        raise ConfigError(f"--gpus-per-actor {gpus:g}: the Ray cluster has {cluster_gpus:g} GPUs")
    spare = cluster_cpus - FREE_CPUS
    by_cpus = math.floor(spare / cpus + 1e-9)
    by_gpus = math.floor(cluster_gpus / gpus + 1e-9) if gpus > 0 else by_cpus
    if actors is None:
        actors = min(by_cpus, by_gpus)
        if actors < 1:
            raise ConfigError(f"--cpus-per-actor {cpus:g}: the Ray cluster has {cluster_cpus:g} CPUs, and "
                              f"{FREE_CPUS} must stay free for reading and writing photos")
    elif actors > by_cpus:
        raise ConfigError(f"--actors {actors} x --cpus-per-actor {cpus:g}: the Ray cluster has "
                          f"{cluster_cpus:g} CPUs, and {FREE_CPUS} must stay free for reading and writing photos")
    elif actors > by_gpus:
        raise ConfigError(f"--actors {actors} x --gpus-per-actor {gpus:g}: the Ray cluster has "
                          f"{cluster_gpus:g} GPUs")
    return ActorPlan(actors, gpus, cpus)


# ---------------------------------------------------------------------------------------------
# The stages, as Ray Data runs them. Batches are dicts of numpy columns; a file name travels as
# os.fsencode bytes (Arrow strings must be UTF-8, file names need not be), a per-photo object
# (Decoded without its x, or Failed) as pickle bytes.


def _decode(batch: dict[str, np.ndarray], stages: PhotoStages) -> dict[str, np.ndarray]:
    """rows {src, path, rel} -> {src, ok, x [N, 3, S, S] float32, item}; a photo that cannot be
    read keeps its row (ok False, x zeros) so that its reason reaches the report."""
    xs, items, ok = [], [], []
    blank = np.zeros((3, stages.size, stages.size), np.float32)
    for src, path, rel in zip(batch["src"], batch["path"], batch["rel"]):
        result = stages.decode(Job(Path(os.fsdecode(path)), Path(os.fsdecode(rel))))
        if isinstance(result, Failed):
            xs.append(blank)
            items.append(pickle.dumps(Failed(Path(os.fsdecode(src)), result.reason)))
        else:
            xs.append(result.x)
            items.append(pickle.dumps(replace(result, x=None), protocol=pickle.HIGHEST_PROTOCOL))
        ok.append(not isinstance(result, Failed))
    return {"src": batch["src"], "ok": np.array(ok, bool), "x": np.stack(xs),
            "item": _objects(items)}


class _Infer:
    """One per actor: the backend, opened once, then every batch the actor is given."""

    def __init__(self, model_root: str, spec: BackendSpec):
        from ..backends import base  # looked up at call time, so a test can stand in for open_backend
        from ..model import load_model_dir

        self._error: Exception | None = None
        try:
            model = load_model_dir(model_root)
            self._shape = (model.out_channels, model.size, model.size)
            # device 'auto' is resolved here, on the actor's node, where Ray set the visible GPUs
            self._backend = base.open_backend(model, spec)
        except (ModelError, BackendError) as e:
            # Raised from __call__ instead: Ray hands the driver a constructor's error as text
            # only, a call's error as itself, which the CLI reports in one line, exit 2.
            self._error = e

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._error is not None:
            raise self._error
        ok = batch["ok"]
        out = np.zeros((len(ok), *self._shape), np.float32)  # [N, C, S, S]; zeros for unread photos
        if ok.any():
            x = batch["x"] if ok.all() else batch["x"][ok]  # [n, 3, S, S] float32
            out[ok] = np.asarray(self._backend.infer(np.ascontiguousarray(x)))
        n = len(ok)
        return {"src": batch["src"], "ok": ok, "out": out, "item": batch["item"],
                "backend": np.full(n, self._backend.name), "device": np.full(n, str(self._backend.device))}


def _finish(batch: dict[str, np.ndarray], stages: PhotoStages) -> dict[str, np.ndarray]:
    """-> {src, reason ('' when the photo's outputs were written), warning (the decoder's, as
    Job.warning; '' for none), backend, device}"""
    reasons, warnings = [], []
    for src, ok, item, out in zip(batch["src"], batch["ok"], batch["item"], batch["out"]):
        record: Decoded | Failed = pickle.loads(item)
        failure = record if not ok else stages.finish(record, out)
        reasons.append("" if failure is None else failure.reason)
        warnings.append((record.job.warning or "") if ok else "")
    return {"src": batch["src"], "reason": np.array(reasons, object), "warning": np.array(warnings, object),
            "backend": batch["backend"], "device": batch["device"]}


class _PortableBackground(Background):
    """A Background that pickles: its lock and render cache stay behind and are made anew on the
    worker. (compose.Background holds a threading.Lock, which cannot travel to Ray workers; this
    can go once Background pickles itself.)"""

    @classmethod
    def of(cls, background: Background) -> "_PortableBackground":
        return cls(background.color, background.image, background.label)

    def __reduce__(self):
        return (_PortableBackground, (self.color, self.image, self.label))


def _objects(values: list) -> np.ndarray:
    array = np.empty(len(values), object)  # np.array would try to broadcast equal-length bytes
    array[:] = values
    return array


def _rows(jobs: Iterable[Job]) -> list[dict[str, bytes]]:
    """src as the user named it (for the report), path absolute (for workers in other folders)."""
    return [{"src": os.fsencode(job.src), "path": os.fsencode(os.path.abspath(job.src)),
             "rel": os.fsencode(job.rel)} for job in jobs]


def _chunks(config: RunConfig, outcomes: Outcomes) -> Iterator[list[Job]]:
    """The run's photos, CHUNK at a time; skips and planning failures go straight to `outcomes`."""
    chunk: list[Job] = []
    for planned in plan_jobs(config, outcomes.index):
        if isinstance(planned, Skipped):
            outcomes.skipped(planned)
        elif isinstance(planned, Failed):
            outcomes.failed(planned)
        elif is_video_name(planned.src.name):
            outcomes.failed(Failed(planned.src, NO_VIDEOS))
        else:
            chunk.append(planned)
            if len(chunk) == CHUNK:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


# ---------------------------------------------------------------------------------------------
# The engine


class RayEngine:
    """Runs `hx-infer run` on Ray.

    address: None for $RAY_ADDRESS when set, else a Ray runtime started for this run on this
    machine (stopped after it); "auto" for the cluster `ray start` runs on this machine;
    "HOST:PORT" for a cluster's head. When this process is already connected to Ray, that
    connection is used and kept. actors, gpus_per_actor, cpus_per_actor: see plan_actors.
    """

    name = "ray"

    def __init__(self, address: str | None = None, actors: int | None = None,
                 gpus_per_actor: float | None = None, cpus_per_actor: float | None = None):
        self.address = address
        self.actors = actors
        self.gpus_per_actor = gpus_per_actor
        self.cpus_per_actor = cpus_per_actor

    def run(self, config: RunConfig, handle: BackendHandle, log: Callable[[str], None] | None = None) -> dict:
        with contextlib.ExitStack() as claims:  # OUTPUT stays locked until the report is written
            start = time.perf_counter()
            model, spec = handle.model, handle.spec
            connected_here = self._connect()
            try:
                resources = ray.cluster_resources()
                cluster = {"cpus": resources.get("CPU", 0.0), "gpus": resources.get("GPU", 0.0),
                           "nodes": len([n for n in ray.nodes() if n.get("Alive")])}
                plan = plan_actors(cluster["cpus"], cluster["gpus"], self.actors, self.gpus_per_actor,
                                   self.cpus_per_actor)
                # the local engine's defaults, for the device the actors hold
                batch_size = spec.batch_size or default_batch_size(Device("cuda" if plan.gpus_per_actor > 0 else "cpu"))
                actor_spec = replace(spec, batch_size=batch_size, threads=plan.threads)
                claim = claims.enter_context(claim_output(config, model))  # writable, locked, same settings, cleaned
                # Workers run in other folders, maybe on other machines: absolute paths only, and no
                # stdin iterator (the driver plans the jobs; workers never list anything).
                shipped = replace(config, source=(), output_dir=Path(os.path.abspath(config.output_dir)),
                                  background=_PortableBackground.of(config.background))
                stages = PhotoStages.for_run(shipped, model)
                outcomes = Outcomes(config, log, claim.index)
                ran_on: set[tuple[str, str]] = set()
                try:
                    with _quiet_ray_data():
                        for chunk in _chunks(config, outcomes):
                            dataset = self._dataset(chunk, stages, model, actor_spec, plan)
                            ran_on |= _collect(dataset, outcomes, chunk)
                finally:
                    outcomes.close()
            except ray.exceptions.RayError as e:
                raise _one_line(e) from None
            finally:
                if connected_here:
                    ray.shutdown()

            backends = sorted(ran_on) or [(spec.name, str(spec.device))]  # nothing inferred: what was asked for
            return finish_report(
                config, model, outcomes.tally, time.perf_counter() - start, engine="ray",
                backend=",".join(sorted({b for b, _ in backends})), device=",".join(sorted({d for _, d in backends})),
                batch_size=batch_size,
                ray={"address": self.address, "actors": plan.actors, "gpus_per_actor": plan.gpus_per_actor,
                     "cpus_per_actor": plan.cpus_per_actor, "cluster": cluster})

    def _connect(self) -> bool:
        """Connect to (or start) Ray unless this process already is; True when it was done here."""
        if ray.is_initialized():
            return False
        # Workers' output stays in Ray's log folder: errors reach the driver as exceptions.
        options: dict = {"logging_level": logging.WARNING, "log_to_driver": False}
        if self.address is None and not os.environ.get("RAY_ADDRESS"):
            options.update(address="local", include_dashboard=False)
        else:
            options.update(address=self.address)
        try:
            ray.init(**options)
        except (ConnectionError, ValueError, RuntimeError) as e:  # no cluster there, refused, bad token
            where = self.address or os.environ.get("RAY_ADDRESS") or "a local Ray runtime"
            raise ConfigError(f"--ray-address {where}: cannot connect ({_first_line(e)})") from None
        return True

    def _dataset(self, jobs: list[Job], stages: PhotoStages, model: ModelDir, spec: BackendSpec,
                 plan: ActorPlan) -> "ray.data.Dataset":
        rows = _rows(jobs)
        return (
            ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / spec.batch_size)))
            .map_batches(_decode, batch_format="numpy", batch_size=None, fn_kwargs={"stages": stages},
                         num_cpus=1)
            # With GPU actors, decoding runs in these CPU tasks, in parallel with inference. With
            # CPU-only actors of one CPU (same resources), Ray Data fuses it into the actor, which
            # then decodes between model calls: no GPU to keep busy, one copy of x fewer.
            .map_batches(_Infer, batch_format="numpy", batch_size=spec.batch_size,
                         compute=ray.data.ActorPoolStrategy(size=plan.actors),
                         num_gpus=plan.gpus_per_actor, num_cpus=plan.cpus_per_actor,
                         # spec.engine_cache: a path on the workers' machines; None: their default
                         fn_constructor_kwargs={"model_root": str(model.root), "spec": spec})
            .map_batches(_finish, batch_format="numpy", batch_size=None, fn_kwargs={"stages": stages},
                         num_cpus=1)
        )


def _collect(dataset: "ray.data.Dataset", outcomes: Outcomes, chunk: list[Job]) -> set[tuple[str, str]]:
    """Run the dataset over `chunk`, counting each photo as its batch comes back -> the (backend,
    device) pairs seen."""
    ran_on: set[tuple[str, str]] = set()
    jobs = {os.fsencode(job.src): job for job in chunk}  # as the batches carry src
    for batch in dataset.iter_batches(batch_format="numpy", batch_size=None):
        for src, reason, warning in zip(batch["src"], batch["reason"], batch["warning"]):
            if reason:
                outcomes.failed(Failed(Path(os.fsdecode(src)), reason))
            else:
                job = jobs.get(bytes(src))  # src as the user named it; the warning came from the worker's
                if job is not None:
                    job = replace(job, warning=warning or None)
                outcomes.processed(job)
        ran_on |= {(str(b), str(d)) for b, d in zip(batch["backend"], batch["device"]) if b}
    return ran_on


# Our progress bar, one-line errors and report stand in for Ray Data's bars, log lines and
# tracebacks (which stay in its log folder); a stage's error comes back as itself.
_DATA_CONTEXT = {"enable_progress_bars": False, "raise_original_map_exception": True}
_QUIET_LOGGERS = ("ray.data",)


class _quiet_ray_data:
    """Ray Data set as _DATA_CONTEXT says and quiet on the console, for the `with` block only."""

    def __enter__(self) -> None:
        context = ray.data.DataContext.get_current()
        self._saved = {name: getattr(context, name) for name in _DATA_CONTEXT}
        self._levels = {name: logging.getLogger(name).level for name in _QUIET_LOGGERS}
        for name, value in _DATA_CONTEXT.items():
            setattr(context, name, value)
        for name in _QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL)

    def __exit__(self, *exc) -> None:
        context = ray.data.DataContext.get_current()
        for name, value in self._saved.items():
            setattr(context, name, value)
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _one_line(e: BaseException) -> Exception:
    """A Ray error -> the hx error inside it when there is one (a model or backend an actor could
    not open is a usage error), else an EngineError with one line."""
    chain: list[BaseException] = []
    seen: BaseException | None = e
    while seen is not None and seen not in chain and len(chain) < 8:
        chain.append(seen)
        cause = getattr(seen, "cause", None)  # RayTaskError: the exception the stage raised
        seen = cause if isinstance(cause, BaseException) else seen.__cause__
    for error in chain:
        # RayTaskError also poses as its cause's class, with the whole traceback for text, and
        # Ray Data appends its retry advice to the cause's message: a new one, first line only.
        if isinstance(error, (ModelError, BackendError, ConfigError)) and not isinstance(error, ray.exceptions.RayError):
            return type(error)(_first_line(error))
    return EngineError(f"ray: {type(chain[-1]).__name__}: {_first_line(chain[-1])}")
