"""Make the environment of a container run usable before the app starts.

Apptainer runs an image as the caller's user, often with a read-only or missing ``HOME``
(``--containall``, ``--no-home``, a home bound read-only); Nipype, matplotlib, fontconfig,
torch and TemplateFlow all write under ``HOME`` or the XDG folders and would crash or hang
there. :func:`prepare_environment` moves every such folder to a fresh temporary directory
when it is not writable, and :func:`check_templateflow` says, without any network, whether
``TEMPLATEFLOW_HOME`` holds usable templates (TemplateFlow would try to download its
skeleton when the folder is missing or empty).

The container entrypoint (``containers/entrypoint.sh``) runs
``python -m contrareg_bids.cli.container_env --print-env``, evaluates the ``export`` lines
it prints, then ``exec``s the app. ``--check`` prints a report and exits 1 on a problem.

Only the standard library is imported here (fast start, usable before anything else).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

#: Variables pointing at folders some library writes to, and their place under ``HOME``.
CACHE_DIRS = {
    "XDG_CACHE_HOME": ".cache",
    "XDG_CONFIG_HOME": ".config",
    "XDG_DATA_HOME": ".local/share",
    "MPLCONFIGDIR": ".config/matplotlib",
    "NIPYPE_CONFIG_DIR": ".nipype",
    "TORCH_HOME": ".cache/torch",
    "TRITON_CACHE_DIR": ".cache/triton",
    "TORCHINDUCTOR_CACHE_DIR": ".cache/torchinductor",
}
_OFF = ("0", "false", "off", "no", "n")


def writable_dir(path: str | os.PathLike[str] | None) -> bool:
    """True when a file can really be created in ``path`` (``os.access`` alone is fooled by
    read-only bind mounts and root-squashed network file systems)."""
    if not path:
        return False
    p = Path(path)
    if not p.is_dir() or not os.access(p, os.W_OK | os.X_OK):
        return False
    try:
        with tempfile.TemporaryFile(dir=p):
            pass
    except OSError:
        return False
    return True


def _usable(path: str | None) -> bool:
    """A folder that exists and is writable, or can be created."""
    if not path:
        return False
    p = Path(path)
    if p.is_dir():
        return writable_dir(p)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return writable_dir(p)


def prepare_environment(
    environ: Mapping[str, str] | None = None, *, tmp_root: str | None = None
) -> dict[str, str]:
    """The variables to change so that HOME and the caches are writable.

    ``HOME`` is kept when writable; otherwise a new ``contrareg-home-*`` folder under
    ``tmp_root`` (default ``TMPDIR``, else ``/tmp``) replaces it, and every variable of
    :data:`CACHE_DIRS` that is unset or unusable is pointed under the new ``HOME``.
    ``TEMPLATEFLOW_AUTOUPDATE`` is set to 0 when ``TEMPLATEFLOW_HOME`` is read-only (an
    update would try to write there). Nothing in ``environ`` is modified.
    """
    env = dict(os.environ if environ is None else environ)
    changes: dict[str, str] = {}
    home = env.get("HOME")
    if not writable_dir(home):
        root = tmp_root or env.get("TMPDIR") or tempfile.gettempdir()
        if not writable_dir(root):
            root = tempfile.gettempdir()
        home = tempfile.mkdtemp(prefix="contrareg-home-", dir=root)
        changes["HOME"] = home
    for name, rel in CACHE_DIRS.items():
        current = env.get(name)
        if current and _usable(current):
            continue  # an explicitly given, writable folder stays
        if not current and "HOME" not in changes:
            continue  # the library's default lives under the writable HOME
        target = Path(home) / rel
        target.mkdir(parents=True, exist_ok=True)
        changes[name] = str(target)
    tf_home = env.get("TEMPLATEFLOW_HOME")
    autoupdate = env.get("TEMPLATEFLOW_AUTOUPDATE", "1").strip().lower()
    if tf_home and autoupdate not in _OFF and not writable_dir(tf_home):
        changes["TEMPLATEFLOW_AUTOUPDATE"] = "0"
    return changes


def apply_environment(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """:func:`prepare_environment` applied to ``environ`` (default ``os.environ``)."""
    target = os.environ if environ is None else environ
    changes = prepare_environment(target)
    target.update(changes)
    return changes


def export_lines(changes: Mapping[str, str]) -> str:
    """POSIX ``export`` lines, quoted for ``eval`` in the entrypoint."""
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(changes.items()))


@dataclass
class TemplateFlowStatus:
    home: Path | None
    templates: dict[str, int] = field(default_factory=dict)  #: template -> fetched NIfTIs
    stubs: int = 0  #: NIfTI files listed by the skeleton but not downloaded
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _default_templateflow_home(env: Mapping[str, str]) -> Path:
    cache = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".cache")
    return Path(cache) / "templateflow"


def check_templateflow(
    environ: Mapping[str, str] | None = None, require: tuple[str, ...] = ()
) -> TemplateFlowStatus:
    """What ``TEMPLATEFLOW_HOME`` holds, read from the file system only (no network).

    A missing or empty folder is a problem: importing TemplateFlow would then download its
    skeleton. ``require`` names templates that must have at least one fetched image.
    """
    env = os.environ if environ is None else environ
    given = env.get("TEMPLATEFLOW_HOME")
    home = Path(given).expanduser() if given else _default_templateflow_home(env)
    status = TemplateFlowStatus(home=home)
    if not home.is_dir() or not any(home.iterdir()):
        status.problems.append(
            f"TEMPLATEFLOW_HOME={home} is missing or empty: TemplateFlow would try to download "
            "its skeleton (no network in the container). Bind a prefetched folder and set "
            "TEMPLATEFLOW_HOME to it, or use the templates built into the image."
        )
        return status
    for tpl in sorted(home.glob("tpl-*")):
        if not tpl.is_dir():
            continue
        fetched = 0
        for nii in tpl.rglob("*.nii.gz"):
            if nii.stat().st_size > 0:
                fetched += 1
            else:
                status.stubs += 1
        status.templates[tpl.name.removeprefix("tpl-")] = fetched
    for name in require:
        if status.templates.get(name, 0) == 0:
            status.problems.append(
                f"template {name!r} has no downloaded image in TEMPLATEFLOW_HOME={home}"
            )
    if env.get("TEMPLATEFLOW_AUTOUPDATE", "1").strip().lower() not in _OFF:
        status.problems.append(
            "TEMPLATEFLOW_AUTOUPDATE is on: set TEMPLATEFLOW_AUTOUPDATE=0 to stay offline"
        )
    return status


def _gpu_summary() -> str:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return "torch not importable"
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return f"torch {torch.__version__}, CUDA {torch.version.cuda}: {', '.join(names)}"
    return f"torch {torch.__version__}, no CUDA device visible (CPU only)"


def report(require: tuple[str, ...] = (), gpu: bool = True) -> tuple[dict, bool]:
    """A summary of the prepared environment (``--check``) and whether it is usable."""
    env = os.environ
    tf = check_templateflow(env, require)
    problems = list(tf.problems)
    for name in ("HOME", *CACHE_DIRS):
        value = env.get(name)
        if value and not _usable(value):
            problems.append(f"{name}={value} is not writable")
    info = {
        "container": env.get("CONTRAREG_CONTAINER", "none"),
        "home": env.get("HOME"),
        "templateflow_home": str(tf.home),
        "templateflow_autoupdate": env.get("TEMPLATEFLOW_AUTOUPDATE", "1"),
        "templates": tf.templates,
        "templates_not_fetched": tf.stubs,
        "threads": {k: env.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        "problems": problems,
    }
    if gpu:
        info["torch"] = _gpu_summary()
    return info, not problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m contrareg_bids.cli.container_env",
        description="Prepare a writable HOME and caches for a container run; check "
        "TemplateFlow offline.",
    )
    p.add_argument(
        "--print-env",
        action="store_true",
        help="print the 'export' lines that make HOME and the caches writable",
    )
    p.add_argument("--check", action="store_true", help="print a JSON report; exit 1 on problems")
    p.add_argument(
        "--require", nargs="+", default=[], metavar="TPL", help="templates that must be present"
    )
    p.add_argument("--no-gpu", action="store_true", help="--check without importing torch")
    args = p.parse_args(argv)
    if not (args.print_env or args.check):
        p.error("give --print-env and/or --check")
    changes = apply_environment()
    if args.print_env:
        sys.stdout.write(export_lines(changes))
        tf = check_templateflow(os.environ)
        for problem in tf.problems:  # warnings only: a path or sub-XX reference needs none
            print(f"contrareg-bids container: warning: {problem}", file=sys.stderr)
    if args.check:
        info, ok = report(tuple(args.require), gpu=not args.no_gpu)
        print(json.dumps(info, indent=2))
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
