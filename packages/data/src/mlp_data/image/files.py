"""Finding image files and checking, before training, that Pillow can read them.

A corrupt file found in epoch 7 costs a run; found at load time it costs a message. The check
opens each file and runs Pillow's ``verify()`` (headers and checksums, no full decode), so it is
cheap enough for every load. What to do with bad files is the adapter's ``on_corrupt`` option.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

from PIL import Image, UnidentifiedImageError

from mlp_core.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
OnCorrupt = Literal["fail", "skip"]
# A message lists this many bad files, then counts the rest.
MAX_LISTED = 20


class SkippedFilesWarning(UserWarning):
    """Bad input files were left out because the config says ``on_corrupt: skip``."""


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: Path) -> list[Path]:
    """Every image file under ``folder``, recursively, in a stable (sorted) order."""
    return sorted(path for path in folder.rglob("*") if is_image_file(path))


def image_problem(path: Path) -> str | None:
    """Why Pillow cannot read ``path``, or None when it can."""
    try:
        with Image.open(path) as image:
            image.verify()
    except FileNotFoundError:
        return "file not found"
    except UnidentifiedImageError:
        return "not an image Pillow can identify"
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow reports truncated data and bad checksums as OSError or SyntaxError.
        return f"corrupt image ({type(exc).__name__}: {exc})"
    return None


def open_image(path: Path) -> Image.Image:
    """Decode ``path`` fully; a failure is a ``DataError`` that names the file."""
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(
            f"{path}: cannot decode image ({type(exc).__name__}: {exc})",
            hint="The file changed or broke after loading; fix or remove it and restart.",
        ) from exc


def find_bad_images(paths: Iterable[Path]) -> dict[Path, str]:
    """Map each unreadable image to the reason; empty when all are readable."""
    bad = {}
    for path in paths:
        problem = image_problem(path)
        if problem is not None:
            bad[path] = problem
    return bad


def format_problems(problems: Sequence[str]) -> str:
    listed = [f"  - {problem}" for problem in problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        listed.append(f"  ... and {len(problems) - MAX_LISTED} more")
    return "\n".join(listed)


def handle_bad_files(problems: Sequence[str], policy: OnCorrupt, what: str) -> None:
    """Raise ``DataError`` listing ``problems`` (policy ``fail``) or warn that they are skipped.

    ``what`` names the kind of problem, e.g. "unreadable images"; each problem names its file.
    """
    if not problems:
        return
    header = f"{len(problems)} {what}:\n{format_problems(problems)}"
    if policy == "fail":
        raise DataError(
            header,
            hint="Fix or remove these files, or set data.on_corrupt: skip to leave them out.",
        )
    warnings.warn(f"skipping {header}", SkippedFilesWarning, stacklevel=3)
