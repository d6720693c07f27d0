"""Writing a file whole or not at all: a temporary name next to it, then ``os.replace``.

A crash, an exception or a concurrent reader never sees a half-written output (a resumed
workflow would pick up a truncated NIfTI; a browser an empty report). Light on purpose:
the configuration and the reports use it without importing the imaging libraries.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterable, Iterator, Sequence
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


def _umask() -> int:
    """The process's umask, read without changing it where the OS allows."""
    try:  # Linux: read it without changing it
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    """Flush a file (or a folder's entries) to the disk; a no-op where the OS refuses."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: PathLike, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same extension); ``os.replace`` it on success.

    The folder is made when missing; nothing is left behind on failure. The file gets the
    usual permissions (umask), not the 0600 some writers give a new file (safetensors,
    ``tempfile``). ``fsync``: the data and the rename reach the disk before returning, for
    files a power cut must not lose (checkpoints, model bundles).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{_suffix(path)}"
    try:
        yield tmp
        if not tmp.exists():
            raise OSError(f"{path}: the writer produced no file")
        os.chmod(tmp, 0o666 & ~_umask())
        if fsync:
            _fsync(tmp)
        os.replace(tmp, path)
        if fsync:
            _fsync(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_tsv_atomic(path: PathLike, header: Sequence[str], rows: Iterable[Sequence[str]]) -> Path:
    """A tab-separated table (a header line, then one line per row of already formatted
    cells), written atomically: the one TSV writer of the package (metrics, group table,
    training lists, evaluation tables)."""
    lines = ["\t".join(header), *("\t".join(str(cell) for cell in row) for row in rows)]
    return write_text_atomic(path, "\n".join(lines) + "\n")
