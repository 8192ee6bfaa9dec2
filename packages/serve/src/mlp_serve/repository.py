"""The model repository: which bundles are on disk, which are loaded, which one answers.

``REPO/<name>/<version>/model.onnx`` (+ ``manifest.json``), as Triton lays it out. Each version
is checked (sha256 against the manifest, onnxruntime can load it, the manifest agrees with the
graph, a warm-up batch runs) before it serves; one that fails is logged with the reason, listed
as UNAVAILABLE in the index, and never replaces a working version. A model's default version is
its highest ready one. Every ready version stays loaded and can be asked for by number.

:meth:`ModelRepository.sync` compares the disk with what is loaded: new or changed versions are
loaded, versions whose folder went away are unloaded. Polling calls it every few seconds; a
version that failed is retried only once its files change.

The repository changes only on the event loop. Other threads (the gRPC front end's) read the
ready versions through :meth:`ModelRepository.ready_version`, which looks in an immutable
snapshot that the loop replaces, as one reference, after every change.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from mlp_core.errors import MlpError
from mlp_obs.log import get_logger
from mlp_obs.metrics import InferenceMetrics
from mlp_serve.batching import DirectRunner, DynamicBatcher
from mlp_serve.bundle import MANIFEST_FILE, MODEL_FILE, Manifest, read_manifest, verify_model_file
from mlp_serve.config import ServeConfig
from mlp_serve.detection_model import DetectionModel, is_detection
from mlp_serve.errors import BundleError, ModelNotFound, ModelUnavailable
from mlp_serve.runtime import ModelRuntime, load_runtime

log = get_logger(__name__)

READY = "READY"
UNAVAILABLE = "UNAVAILABLE"
LOADING = "LOADING"

Fingerprint = tuple


@dataclass(eq=False)
class ModelVersion:
    """A loaded, warmed-up version of a model and the runner that feeds it."""

    name: str
    version: int
    path: Path
    manifest: Manifest | None
    runtime: ModelRuntime
    runner: DynamicBatcher | DirectRunner
    fingerprint: Fingerprint
    max_batch_size: int  # 0: the model cannot batch (no variable first axis)
    batching: bool  # dynamic batching in use
    detection: DetectionModel | None = None  # a detection bundle: outputs computed after the run


@dataclass
class _Failure:
    fingerprint: Fingerprint
    reason: str


@dataclass
class _Model:
    versions: dict[int, ModelVersion] = field(default_factory=dict)

    def default(self) -> ModelVersion | None:
        return self.versions[max(self.versions)] if self.versions else None


# name -> (default version, {number: version}): replaced whole, never changed in place.
Snapshot = Mapping[str, tuple[ModelVersion, Mapping[int, ModelVersion]]]

RunnerFactory = Callable[[str, int, ModelRuntime, int], "DynamicBatcher | DirectRunner"]


class ModelRepository:
    def __init__(
        self,
        root: str | os.PathLike[str],
        config: ServeConfig,
        *,
        executor: Executor,
        metrics: InferenceMetrics,
        make_runner: RunnerFactory,
    ) -> None:
        self.root = Path(root)
        self._config = config
        self._executor = executor
        self._metrics = metrics
        self._make_runner = make_runner
        self._models: dict[str, _Model] = {}
        self._failures: dict[tuple[str, int], _Failure] = {}
        self._loading: set[tuple[str, int]] = set()
        self._disabled: set[str] = set()  # unloaded through the API: polling leaves them alone
        self._extra: set[str] = set()  # loaded through the API although not in config.models
        self._lock = asyncio.Lock()
        self._snapshot: Snapshot = MappingProxyType({})

    # -- queries ---------------------------------------------------------------------------

    def names(self) -> list[str]:
        """The models this server serves or tries to: configured, on disk, or loaded."""
        if self._config.models is not None:
            names = set(self._config.models) | self._extra
        else:
            names = set(self._on_disk())
        return sorted(names | set(self._models))

    def get(self, name: str, version: str | int | None = None) -> ModelVersion:
        """The ready version asked for (the default one when ``version`` is None or empty)."""
        model = self._models.get(name)
        default = model.default() if model is not None else None
        if model is None or default is None:
            if name in self.names():
                raise ModelUnavailable(f"model {name!r} is not ready: {self._reason(name)}")
            raise ModelNotFound(
                f"unknown model {name!r}; this server serves {', '.join(self.names()) or 'none'}",
                hint="GET /v2/repository/index (POST) lists the models and their states.",
            )
        if version in (None, ""):
            return default
        number = _version_number(str(version))
        if number is None or number not in model.versions:
            ready = ", ".join(str(v) for v in sorted(model.versions))
            if number is not None and (name, number) in self._failures:
                raise ModelUnavailable(
                    f"model {name!r} version {version} is not ready: "
                    f"{self._failures[(name, number)].reason}"
                )
            raise ModelNotFound(
                f"model {name!r} has no ready version {version!r}; ready versions: {ready}"
            )
        return model.versions[number]

    def ready_version(self, name: str, version: str | None = None) -> ModelVersion | None:
        """The ready version :meth:`get` would return, or None where :meth:`get` would raise.

        Safe from any thread: it reads the snapshot the loop last published, never the
        dictionaries the loop changes.
        """
        found = self._snapshot.get(name)
        if found is None:
            return None
        default, versions = found
        if version in (None, ""):
            return default
        number = _version_number(str(version))
        return versions.get(number) if number is not None else None

    def ready_versions(self, name: str) -> list[int]:
        model = self._models.get(name)
        return sorted(model.versions) if model else []

    def has_ready(self, name: str) -> bool:
        return bool(self.ready_versions(name))

    def index(self) -> list[dict]:
        """Every model and version with its state, as Triton's repository index lists them."""
        rows: dict[tuple[str, int], dict] = {}
        disk = self._on_disk()
        for name in sorted(set(disk) | set(self._models) | set(self._config.models or [])):
            for version in disk.get(name, {}):
                failure = self._failures.get((name, version))
                state = LOADING if (name, version) in self._loading else UNAVAILABLE
                reason = failure.reason if failure else ""
                if name in self._disabled:
                    reason = "unloaded"
                elif not failure and state == UNAVAILABLE:
                    reason = "not loaded"
                rows[(name, version)] = _row(name, version, state, reason)
            for version in self.ready_versions(name):
                rows[(name, version)] = _row(name, version, READY, "")
            if name not in disk and not self.ready_versions(name):
                rows[(name, 0)] = {"name": name, "state": UNAVAILABLE, "reason": "not found"}
        return [rows[key] for key in sorted(rows)]

    # -- changes ---------------------------------------------------------------------------

    async def sync(self, names: list[str] | None = None, *, retry_failed: bool = False) -> None:
        """Bring the loaded versions in line with the disk for ``names`` (default: all)."""
        async with self._lock:
            disk = self._on_disk()
            wanted = names if names is not None else self.names()
            for name in wanted:
                if name in self._disabled:
                    continue
                if name not in disk and name not in self._models:
                    self._note_missing(name)
                await self._sync_model(name, disk.get(name, {}), retry_failed)

    async def load(self, name: str) -> None:
        """Load (or reload) every version of ``name`` on disk, even if unloaded or not listed."""
        if not (self.root / name).is_dir():
            raise ModelNotFound(f"no model {name!r} in the repository {self.root}")
        self._disabled.discard(name)
        if self._config.models is not None and name not in self._config.models:
            self._extra.add(name)
        await self.sync([name], retry_failed=True)
        if not self.has_ready(name):
            raise ModelUnavailable(f"model {name!r} failed to load: {self._reason(name)}")

    async def unload(self, name: str) -> None:
        if name not in self.names() and not (self.root / name).is_dir():
            raise ModelNotFound(f"unknown model {name!r}")
        async with self._lock:
            self._disabled.add(name)
            self._extra.discard(name)
            model = self._models.pop(name, None)
            self._publish()
            for version in list(model.versions.values()) if model else []:
                await self._retire(version)

    async def close(self) -> None:
        async with self._lock:
            models, self._models = self._models, {}
            self._publish()
            for model in models.values():
                for version in model.versions.values():
                    await self._retire(version)

    # -- internals -------------------------------------------------------------------------

    async def _sync_model(self, name: str, on_disk: dict[int, Path], retry_failed: bool) -> None:
        model = self._models.setdefault(name, _Model())
        for number in sorted(set(model.versions) - set(on_disk)):
            log.info("model version removed from the repository", model=name, version=number)
            retired = model.versions.pop(number)
            self._publish()
            await self._retire(retired)
        for number, folder in sorted(on_disk.items()):
            fingerprint = _fingerprint(folder)
            loaded = model.versions.get(number)
            if loaded is not None and loaded.fingerprint == fingerprint:
                continue
            failure = self._failures.get((name, number))
            if failure is not None and failure.fingerprint == fingerprint and not retry_failed:
                continue
            await self._load_version(name, number, folder, fingerprint, model)
        if not model.versions:
            del self._models[name]
        self._publish()

    async def _load_version(
        self, name: str, number: int, folder: Path, fingerprint: Fingerprint, model: _Model
    ) -> None:
        key = (name, number)
        self._loading.add(key)
        try:
            loop = asyncio.get_running_loop()
            manifest, runtime, detection = await loop.run_in_executor(
                self._executor, self._prepare, name, number, folder
            )
        except Exception as exc:  # whatever is wrong with one version, the others keep serving
            reason = exc.message if isinstance(exc, MlpError) else f"{type(exc).__name__}: {exc}"
            self._failures[key] = _Failure(fingerprint, reason)
            serving = model.default()
            log.error(
                "model version refused",
                model=name,
                version=number,
                reason=reason,
                still_serving=serving.version if serving else None,
            )
            return
        finally:
            self._loading.discard(key)
        self._failures.pop(key, None)
        batchable = runtime.batchable
        max_batch = self._config.batching.max_batch_size if batchable else 0
        runner = self._make_runner(name, number, runtime, max_batch)
        previous = model.versions.get(number)
        model.versions[number] = ModelVersion(
            name=name,
            version=number,
            path=folder,
            manifest=manifest,
            runtime=runtime,
            runner=runner,
            fingerprint=fingerprint,
            max_batch_size=max_batch,
            batching=isinstance(runner, DynamicBatcher),
            detection=detection,
        )
        self._publish()
        self._metrics.model_loaded(name, str(number), runtime.provider)
        log.info(
            "model version ready",
            model=name,
            version=number,
            provider=runtime.provider,
            default=max(model.versions),  # the version numbers are the keys
            max_batch_size=max_batch,
        )
        if previous is not None:
            await previous.runner.close()

    def _publish(self) -> None:
        """Replace the snapshot other threads read (on the loop, after each change)."""
        snapshot = {}
        for name, model in self._models.items():
            default = model.default()
            if default is not None:
                snapshot[name] = (default, MappingProxyType(dict(model.versions)))
        self._snapshot = MappingProxyType(snapshot)

    def _prepare(
        self, name: str, number: int, folder: Path
    ) -> tuple[Manifest | None, ModelRuntime, DetectionModel | None]:
        """Check and load one version (runs in a thread: hashing and loading block)."""
        manifest = read_manifest(folder)
        path = verify_model_file(folder, manifest)
        runtime = load_runtime(path, self._config)
        if manifest is not None:
            _check_manifest(folder, manifest, runtime)
        detection = None
        if manifest is not None and is_detection(manifest):
            detection = DetectionModel.for_bundle(folder, manifest, runtime)
        if self._config.warmup:
            _warm_up(folder, runtime, manifest)
        return manifest, runtime, detection

    async def _retire(self, version: ModelVersion) -> None:
        # Requests already queued still get their answers; new ones no longer find it.
        await version.runner.close()
        self._metrics.model_unloaded(version.name, str(version.version))
        log.info("model version unloaded", model=version.name, version=version.version)

    def _on_disk(self) -> dict[str, dict[int, Path]]:
        found: dict[str, dict[int, Path]] = {}
        if not self.root.is_dir():
            return found
        for model_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            if model_dir.name.startswith("."):
                continue
            versions = {}
            for version_dir in model_dir.iterdir():
                number = _version_number(version_dir.name)
                if number is not None and version_dir.is_dir():
                    versions[number] = version_dir
            if versions:
                found[model_dir.name] = versions
        return found

    def _note_missing(self, name: str) -> None:
        key = (name, 0)
        if key not in self._failures:
            self._failures[key] = _Failure((), f"no {name}/<version>/ folder in {self.root}")
            log.error("model not found in the repository", model=name, root=str(self.root))

    def _reason(self, name: str) -> str:
        if name in self._disabled:
            return "unloaded"
        reasons = [f.reason for (n, _), f in sorted(self._failures.items()) if n == name]
        if any(n == name for n, _ in self._loading):
            reasons.append("loading")
        return "; ".join(reasons) or "no version loaded"


def _row(name: str, version: int, state: str, reason: str) -> dict:
    return {"name": name, "version": str(version), "state": state, "reason": reason}


def _version_number(text: str) -> int | None:
    return int(text) if text.isdigit() and int(text) > 0 else None


def _fingerprint(folder: Path) -> Fingerprint:
    # Size and modification time: a version copied in place or re-exported changes it.
    parts = []
    for file in (MODEL_FILE, MANIFEST_FILE):
        try:
            stat = (folder / file).stat()
            parts.append((stat.st_size, stat.st_mtime_ns))
        except FileNotFoundError:
            parts.append(None)
    return tuple(parts)


def _check_manifest(folder: Path, manifest: Manifest, runtime: ModelRuntime) -> None:
    for kind, declared, actual in (
        ("inputs", manifest.inputs, runtime.inputs),
        ("outputs", manifest.outputs, runtime.outputs),
    ):
        if kind == "outputs" and is_detection(manifest):
            continue  # the server computes them from the raw head: DetectionModel checks them
        want = sorted((t.name, t.datatype) for t in declared)
        have = sorted((t.name, t.datatype) for t in actual)
        if want != have:
            raise BundleError(
                f"{folder}: the manifest's {kind} {want} do not match the model's {have}",
                hint="Export the model again so the manifest describes it.",
            )


def _warm_up(folder: Path, runtime: ModelRuntime, manifest: Manifest | None) -> None:
    dims = {}
    crop = (manifest.preprocessing.get("crop_size") if manifest else None) or None
    for tensor in runtime.inputs:
        if len(tensor.shape) == 4 and crop and any(d < 0 for d in tensor.shape[1:]):
            # An image input with variable height and width: warm up at the exported size.
            height, width = crop if isinstance(crop, list) else (crop, crop)
            channels = tensor.shape[1] if tensor.shape[1] > 0 else 3
            dims[tensor.name] = [1, channels, int(height), int(width)]
    # Size 1 for a batch axis is a real request; for any other variable axis it is a guess.
    guessed = (lambda t: t.shape[1:]) if runtime.batchable else (lambda t: t.shape)
    variable = any(d < 0 for t in runtime.inputs if t.name not in dims for d in guessed(t))
    try:
        runtime.warmup(dims)
    except Exception as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if variable:
            # Sizes of 1 for unknown axes may simply be too small for the model (a convolution):
            # that says nothing about real requests, so the version still serves.
            log.warning("warm-up skipped: guessed input sizes", folder=str(folder), error=message)
            return
        raise BundleError(f"{folder}: the warm-up batch failed: {message}") from exc
