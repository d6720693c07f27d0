"""How the levels run their Nipype workflows and report a failure: the plugin and its
settings, GPU checks, the outputs of a node that ran, one failed subject logged and
recorded without stopping the others."""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

from ..config import RunConfig
from ..io.run_logs import run_log_dir
from ..runtime import available_cpus

LOGGER = logging.getLogger("contrareg_bids.participant")


class SubjectError(ValueError):
    """A subject cannot be processed as asked (reported per subject, others go on)."""


def gpu_available(cfg: RunConfig) -> bool:
    """False, after logging why, when the run demands CUDA (``--device cuda[:N]``) and there
    is none: exit code 75, "try again on a GPU node" (``--device auto`` falls back to the
    CPU instead)."""
    if not cfg.device.startswith("cuda"):
        return True
    import torch

    if torch.cuda.is_available():
        return True
    LOGGER.error(
        "--device %s: CUDA is not available here; run on a GPU node, or use --device auto or cpu",
        cfg.device,
    )
    return False


def plugin_settings(cfg: RunConfig, share: int = 1) -> tuple[str, dict]:
    """Nipype plugin of one subject's workflow when ``share`` subjects run at once (each gets
    ``1/share`` of ``--nprocs``, ``--mem`` and the GPU slots)."""
    if cfg.use_plugin is not None:
        import yaml

        settings = yaml.safe_load(cfg.use_plugin.read_text()) or {}
        return settings.get("plugin", "MultiProc"), settings.get("plugin_args", {})
    nprocs = max(1, (cfg.nprocs or available_cpus()) // share)
    if nprocs == 1:
        return "Linear", {}
    args: dict = {"n_procs": nprocs, "raise_insufficient": False}
    if cfg.mem_gb:
        args["memory_gb"] = cfg.mem_gb / share
    if cfg.n_gpus is not None:
        args["n_gpu_procs"] = max(1, cfg.n_gpus // share) if cfg.n_gpus else 0
    return "MultiProc", args


def node_outputs(execgraph, name: str):
    """The outputs of the node ``name`` of a workflow that ran (``wf.run()``'s graph)."""
    for node in execgraph.nodes():
        if node.name == name:
            return node.result.outputs
    raise RuntimeError(f"the workflow ran without its node {name!r}")


def execution_config(crash_dir: Path) -> dict:
    """Nipype's execution settings of every workflow the app runs."""
    return {
        "crashdump_dir": str(crash_dir),
        "crashfile_format": "txt",
        "hash_method": "content",  # a work directory survives copying
        "remove_unnecessary_outputs": False,
        "stop_on_first_crash": True,
        # MultiProc polls its workers every 2 s by default, most of the run time of a small
        # subject (HALFpipe uses 0.1 s too)
        "poll_sleep_duration": 0.1,
    }


def write_workflow_graph(wf) -> None:
    """``--write-graph``: the workflow's graph in its work folder (SVG with Graphviz's
    ``dot``, else the ``.dot`` file alone)."""
    try:
        wf.write_graph(graph2use="colored", format="svg", simple_form=True)
    except OSError:
        wf.write_graph(graph2use="colored", format="dot", simple_form=True)
        LOGGER.warning(
            "%s: Graphviz 'dot' is not installed: only the .dot graph was written (in %s)",
            wf.name,
            Path(wf.base_dir) / wf.name,
        )


def is_gpu_out_of_memory(err: BaseException, message: str = "") -> bool:
    """True for a CUDA out-of-memory error, raised here or inside a Nipype node (then only
    the crash file's last line, ``message``, tells)."""
    name = type(err).__name__
    text = f"{err} {message}"
    return name == "OutOfMemoryError" or "OutOfMemoryError" in text or "CUDA out of memory" in text


_NODE_FAILURES = ("Workflow did not execute cleanly", "Exception raised while executing Node")


def report_failure(cfg: RunConfig, subject: str, sid: str, err: Exception) -> str:
    """Write ``sub-X/log/<run_uuid>/error-<sid>.txt`` and log the cause; return the cause's
    message."""
    log_dir = run_log_dir(cfg.output_dir, subject, cfg.run_uuid)
    log_dir.mkdir(parents=True, exist_ok=True)
    message = str(err)
    crashes = sorted(log_dir.glob("crash-*.txt"), key=lambda p: p.stat().st_mtime)
    # a failed node: "Workflow did not execute cleanly" (MultiProc) or "Exception raised while
    # executing Node ..." (Linear); the cause is the last line of the node's crash file
    if crashes and any(m in message for m in _NODE_FAILURES):
        text = crashes[-1].read_text()
        last = [ln for ln in text.strip().splitlines() if ln.strip()][-1]
        message = f"{last.strip()} (crash file {crashes[-1]})"
    message = message.removeprefix(f"{sid}: ")  # SubjectError messages name the subject
    (log_dir / f"error-{sid}.txt").write_text(
        f"{sid}: {message}\n\n" + "".join(traceback.format_exception(err))
    )
    LOGGER.error("%s failed: %s", sid, message)
    return message
