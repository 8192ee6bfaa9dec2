"""ultralytics, imported offline and without side effects: the one way mlp imports it.

ultralytics (``pip install 'mlp-models[yolo]'``, AGPL-3.0) reaches the network and changes the
process in several places; each needs its own switch, and most must be set before the first
``import ultralytics`` (measured on 8.4.190):

- ``YOLO_OFFLINE=1``: no online check at import, no version check, no analytics;
- ``YOLO_AUTOINSTALL=0``: no ``pip install`` of missing requirements (export wants onnxslim);
- ``YOLO_CONFIG_DIR``: its ``settings.json`` (created at import, with the current directory
  frozen into ``datasets_dir`` and ``runs_dir``) goes into a folder of ours,
  :func:`ultralytics_home`, and those directories are pointed there too;
- fonts: every dataset check fetches ``Arial.ttf`` (``plots=False`` does not stop it); a local
  TTF (matplotlib's DejaVuSans) is put where ultralytics looks first, under the names it asks for;
- callbacks: analytics, the Ultralytics Platform and the MLflow, ClearML, Comet, DVC, Ray Tune,
  TensorBoard and W&B integrations are never attached (our tracker records the run);
- AMP: on a GPU its AMP check loads ``yolo26n.pt`` (a download); ours compares the model being
  trained in fp32 and under autocast instead;
- threads: ``import ultralytics`` sets ``OMP_NUM_THREADS`` and OpenCV's threads, and each of its
  device selections calls ``torch.set_num_threads``; :func:`preserved_threads` puts them back.

Everything in mlp imports ultralytics through :func:`import_ultralytics`, never directly.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from mlp_core.errors import MissingDependencyError

INSTALL = "mlp-models[yolo]"
# Where mlp keeps ultralytics' settings and the font it needs; overridable for tests and
# read-only homes. An explicit YOLO_CONFIG_DIR (the user's own) wins over both.
HOME_VARIABLE = "MLP_ULTRALYTICS_DIR"
FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")
# ultralytics' integrations, all off: settings keys it reads before attaching callbacks.
INTEGRATIONS = ("clearml", "comet", "dvc", "hub", "mlflow", "neptune", "raytune", "tensorboard")
INTEGRATIONS += ("wandb", "platform")
# Environment variables ultralytics writes at import.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "NUMEXPR_MAX_THREADS")
# GPUs on which ultralytics' own check disables AMP (NaN losses); kept from its check_amp.
_BAD_AMP_GPUS = re.compile(
    r"(nvidia|geforce|quadro|tesla).*?(1660|1650|1630|t400|t550|t600|t1000|t1200|t2000|k40m)",
    re.IGNORECASE,
)

_module: ModuleType | None = None


def ultralytics_home() -> Path:
    """The folder that holds ultralytics' settings.json and fonts for mlp.

    ``$MLP_ULTRALYTICS_DIR``, else ``$XDG_CACHE_HOME/mlp/ultralytics`` (``~/.cache/...``).
    """
    explicit = os.environ.get(HOME_VARIABLE)
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "mlp" / "ultralytics"


def import_ultralytics() -> ModuleType:
    """The ``ultralytics`` module, imported once with every offline switch set first.

    Raises :class:`MissingDependencyError` (``pip install 'mlp-models[yolo]'``) without it.
    """
    global _module
    if _module is not None:
        return _module
    if importlib.util.find_spec("ultralytics") is None:
        raise MissingDependencyError("YOLO detection (ultralytics)", INSTALL)
    home = ultralytics_home()
    _switch_off_network(home)
    with preserved_threads():
        import ultralytics
        import ultralytics.utils as utils

        _settings(utils, home)
        _no_integration_callbacks()
        _local_amp_check()
    _module = ultralytics
    return ultralytics


def _switch_off_network(home: Path) -> None:
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    # ultralytics' console lines and progress bars: mlp prints its own progress; they come
    # back with MLP_LOG_LEVEL=DEBUG (mlp --debug), or YOLO_VERBOSE=True.
    if os.environ.get("MLP_LOG_LEVEL", "").upper() != "DEBUG":
        os.environ.setdefault("YOLO_VERBOSE", "False")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(home))
    # ultralytics adds the subfolder "Ultralytics" to YOLO_CONFIG_DIR: its USER_CONFIG_DIR.
    config_dir = Path(os.environ["YOLO_CONFIG_DIR"]).expanduser() / "Ultralytics"
    config_dir.mkdir(parents=True, exist_ok=True)
    font = _local_font()
    for name in FONT_NAMES:
        target = config_dir / name
        if font is not None and not target.exists():
            # Copied, not linked: a config folder must survive the venv it came from.
            partial = target.with_suffix(f".{os.getpid()}.part")
            shutil.copyfile(font, partial)
            partial.replace(target)


def _local_font() -> Path | None:
    """matplotlib's DejaVuSans (ultralytics depends on matplotlib); found without importing it."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or spec.origin is None:
        return None
    font = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
    return font if font.is_file() else None


def _settings(utils: Any, home: Path) -> None:
    """Point ultralytics' folders at ours and turn its sync and integrations off, persisted."""
    config_dir = Path(utils.USER_CONFIG_DIR)
    wanted: dict[str, Any] = {
        "datasets_dir": str(config_dir / "datasets"),
        "weights_dir": str(config_dir / "weights"),
        "runs_dir": str(config_dir / "runs"),
        "sync": False,
    }
    wanted.update({key: False for key in INTEGRATIONS if key in utils.SETTINGS})
    changed = {key: value for key, value in wanted.items() if utils.SETTINGS.get(key) != value}
    if changed:
        utils.SETTINGS.update(changed)
    # The module constants were read from the settings at import.
    utils.DATASETS_DIR = Path(wanted["datasets_dir"])
    utils.WEIGHTS_DIR = Path(wanted["weights_dir"])
    utils.RUNS_DIR = Path(wanted["runs_dir"])


def _no_integration_callbacks() -> None:
    """Trainers, validators, predictors and exporters attach analytics (events), the Platform's
    callbacks (uploads when ULTRALYTICS_API_KEY is set) and every enabled integration through
    one function, called as ``callbacks.add_integration_callbacks``: make it attach nothing."""
    import ultralytics.utils.callbacks as callbacks
    import ultralytics.utils.callbacks.base as base

    def add_no_integration_callbacks(instance: Any) -> None:
        del instance  # ultralytics' own default callbacks stay; nothing else is attached

    callbacks.add_integration_callbacks = add_no_integration_callbacks
    base.add_integration_callbacks = add_no_integration_callbacks


def _local_amp_check() -> None:
    import ultralytics.engine.trainer as trainer
    import ultralytics.utils.checks as checks

    # The trainer calls the name it imported from checks: replace both.
    setattr(trainer, "check_amp", amp_works)  # noqa: B010 - not a public attribute of trainer
    checks.check_amp = amp_works


def amp_works(model: Any) -> bool:
    """ultralytics' AMP check without its download: on CUDA, the model being trained gives the
    same raw outputs in fp32 and under autocast (on a fixed input); never on CPU or MPS."""
    import torch

    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    if device.type != "cuda":
        return False
    if _BAD_AMP_GPUS.search(torch.cuda.get_device_name(device)):
        return False
    was_training = model.training
    model.eval()
    try:
        generator = torch.Generator().manual_seed(0)
        image = torch.rand((2, 3, 256, 256), generator=generator).to(device)
        with torch.no_grad():
            full = _first_tensor(model(image)).float()
            with torch.autocast(device_type="cuda"):
                mixed = _first_tensor(model(image)).float()
        return bool(torch.isfinite(mixed).all()) and torch.allclose(full, mixed, atol=0.5)
    finally:
        model.train(was_training)


def _first_tensor(output: Any) -> Any:
    while isinstance(output, (list, tuple)):
        output = output[0]
    return output


@contextlib.contextmanager
def preserved_threads() -> Iterator[None]:
    """Undo, on exit, what ultralytics does to the process's threads inside the block.

    Wrap every ultralytics train, val, predict and export call: its device selection calls
    ``torch.set_num_threads`` and its import sets ``OMP_NUM_THREADS``; the rest of mlp keeps
    the values it had.
    """
    import torch

    variables = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        for name, value in variables.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


__all__ = [
    "HOME_VARIABLE",
    "INSTALL",
    "amp_works",
    "import_ultralytics",
    "preserved_threads",
    "ultralytics_home",
]
