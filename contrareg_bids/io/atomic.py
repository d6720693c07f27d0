"""Writing a file whole or not at all: a temporary name next to it, then ``os.replace``.

A crash, an exception or a concurrent reader never sees a half-written output (a resumed
workflow would pick up a truncated NIfTI; a browser an empty report). Light on purpose:
the configuration and the reports use it without importing the imaging libraries.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

PathLike = str | os.PathLike

#: Extensions that choose the file format (ITK, nibabel): kept on the temporary name.
_EXTENSIONS = (".nii.gz", ".nii", ".h5", ".hdf5", ".mat", ".txt", ".tfm")


def _suffix(path: Path) -> str:
    """``.nii.gz`` for ``x.nii.gz``: the full extension ITK / nibabel choose the format by."""
    for ext in _EXTENSIONS:
        if path.name.endswith(ext):
            return ext
    return path.suffix


@contextlib.contextmanager
def atomic_output(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same extension); ``os.replace`` it on success.
    The folder is made when missing; nothing is left behind on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{_suffix(path)}"
    try:
        yield tmp
        if not tmp.exists():
            raise OSError(f"{path}: the writer produced no file")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
