"""Runs corpus snippets for one library: `python _runner.py transformers|siglip`.

The process imports the library (and what snippets commonly import) once, then reads one JSON request per line on
stdin (`{"program": PATH, "out": DIR, "timeout": S}`) and runs each program in a forked child, so every snippet
gets a fresh process without paying the imports again. The child runs in `DIR/cwd` with stdout and stderr in
`DIR/stdout.txt` and `DIR/stderr.txt`, seeds torch, random and numpy with 0, executes the program as `__main__`,
and writes `DIR/result.json` and, when it ran, its module-level values in canonical form to `DIR/values.pkl`.
The parent answers each request with one line on stdout once the child is done (or killed at the timeout).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import traceback
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for _torchvision

import _torchvision  # noqa: F401  (before transformers; the installed torchvision's operators don't load)

OPAQUE = "opaque"

# What a process imports before forking: the library's public names snippets use (and their modules).
PRELOAD = {
    "transformers": ["AutoModel", "AutoProcessor", "AutoTokenizer", "AutoImageProcessor", "pipeline", "SiglipModel",
                     "Siglip2Model", "SiglipProcessor", "Siglip2Processor", "SiglipTokenizer", "GemmaTokenizer",
                     "SiglipImageProcessor", "Siglip2ImageProcessor", "AutoModelForZeroShotImageClassification"],
    "siglip": ["AutoModel", "AutoProcessor", "pipeline", "SiglipModel", "Siglip2Model", "SiglipProcessor",
               "Siglip2Processor"],
}  # fmt: skip


def preload(library: str) -> None:
    import importlib

    import numpy  # noqa: F401
    import PIL.Image  # noqa: F401
    import requests  # noqa: F401
    import torch  # noqa: F401

    module = importlib.import_module(library)
    for name in PRELOAD[library]:
        with contextlib.suppress(Exception):  # a name the library lacks: the snippet that uses it will say so
            getattr(module, name)


def canonical(value: Any, depth: int = 0) -> Any:
    """A comparable, picklable form of a value, or `(OPAQUE, class name)` for what is not data (models,
    processors, pipelines). Tensors and arrays keep their dtype and shape; mappings (dicts, model outputs, batch
    features) and sequences are walked."""
    import numpy as np
    import PIL.Image
    import torch

    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if depth > 8:
        return (OPAQUE, type(value).__name__)
    if isinstance(value, torch.Tensor) and hasattr(value, "last_hidden_state"):
        # siglip's get_*_features on purpose return transformers 4.x's tensor, which also reads as the tower
        # output transformers 5.x returns (`.pooler_output` is the tensor, `.last_hidden_state`, ...): compared
        # as that output, field by field
        fields = {
            "last_hidden_state": value.last_hidden_state,
            "pooler_output": value.as_subclass(torch.Tensor),
        }
        fields.update({k: getattr(value, k) for k in ("hidden_states", "attentions") if hasattr(value, k)})
        return ("mapping", {k: canonical(v, depth + 1) for k, v in fields.items()})
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        data = tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()
        return ("tensor", str(tensor.dtype), tuple(tensor.shape), data.copy())
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            return ("seq", [canonical(v, depth + 1) for v in value.tolist()])
        return ("array", str(value.dtype), tuple(value.shape), value.copy())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    if isinstance(value, PIL.Image.Image):
        return ("image", value.mode, value.size, np.asarray(value).copy())
    if isinstance(value, Mapping) or (hasattr(value, "keys") and hasattr(value, "__getitem__")):
        # dicts, and what indexes like one: ModelOutput, BatchFeature, BatchEncoding (by their non-None keys)
        return ("mapping", {str(k): canonical(value[k], depth + 1) for k in value.keys()})  # noqa: SIM118
    if isinstance(value, (list, tuple)):  # torch.Size and named tuples too
        return ("seq", [canonical(v, depth + 1) for v in value])
    return (OPAQUE, type(value).__name__)


def module_values(namespace: dict[str, Any]) -> dict[str, Any]:
    """The snippet's data variables: public names that are not modules, classes, functions or opaque objects."""
    values = {}
    for name, value in namespace.items():
        if name.startswith("_") or isinstance(value, (types.ModuleType, type, types.FunctionType)):
            continue
        canon = canonical(value)
        if not (isinstance(canon, tuple) and canon and canon[0] == OPAQUE):
            values[name] = canon
    return values


def run_child(program: Path, out: Path) -> None:
    """In the forked child: run the program and record what happened."""
    import pickle
    import random

    import numpy as np
    import torch

    os.chdir(out / "cwd")
    for fd, name in ((1, "stdout.txt"), (2, "stderr.txt")):
        handle = os.open(out / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(handle, fd)
        os.close(handle)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    sys.argv = [str(program)]
    torch.set_num_threads(1)
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    namespace: dict[str, Any] = {"__name__": "__main__", "__file__": str(program)}
    result: dict[str, Any] = {"ok": True}
    try:
        exec(compile(program.read_text(), str(program), "exec"), namespace)
    except BaseException as error:  # SystemExit too: a snippet that exits did not run to its end
        result = {"ok": False, "error": f"{type(error).__name__}: {error}".strip()[:2000],
                  "traceback": traceback.format_exc()[-6000:]}  # fmt: skip
    if result["ok"]:
        try:
            (out / "values.pkl").write_bytes(pickle.dumps(module_values(namespace)))
        except Exception as error:
            result = {"ok": False, "error": f"harness: the values could not be recorded: {error!r}",
                      "traceback": traceback.format_exc()}  # fmt: skip
    (out / "result.json").write_text(json.dumps(result))
    sys.stdout.flush()
    sys.stderr.flush()


def serve(library: str) -> None:
    preload(library)
    for line in sys.stdin:
        request = json.loads(line)
        program, out = Path(request["program"]), Path(request["out"])
        pid = os.fork()
        if pid == 0:
            try:
                run_child(program, out)
            finally:
                os._exit(0)
        deadline = time.monotonic() + request["timeout"]
        while True:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.02)
        if not (out / "result.json").exists():
            failure = (
                f"timed out after {request['timeout']} s" if time.monotonic() > deadline else "the child died"
            )
            (out / "result.json").write_text(
                json.dumps({"ok": False, "error": f"harness: {failure}", "traceback": ""})
            )
        print("done", flush=True)


if __name__ == "__main__":
    serve(sys.argv[1])
