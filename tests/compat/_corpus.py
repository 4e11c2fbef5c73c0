"""The compatibility corpus's harness: snippets, the two rewrites, the offline hub cache, the image server and
the comparison of what a snippet leaves behind.

Each snippet in `snippets/` runs twice in a subprocess (`_runner.py`): as written against transformers (the
oracle), and with only its import statements turned from `transformers` to `siglip`. Both runs see the same
world: a throwaway Hugging Face cache holding tiny random checkpoints that transformers saved under every
`google/siglip*` id the snippets name (`HF_HUB_OFFLINE=1`, so both libraries resolve ids through their real hub
code), and a loopback HTTP server standing in for every image URL. Afterwards the snippet's module-level
variables (tensors, arrays, numbers, strings, images, containers of them, model outputs, batch features) are
compared: floats within a tolerance, everything else exactly.

Run it by hand: `python tests/compat/_corpus.py run SNIPPET [SNIPPET ...]` (or no name for all of them).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SNIPPETS = HERE / "snippets"
TESTS = HERE.parent
LIBRARIES = ("transformers", "siglip")
TIMEOUT_S = 180  # one run of one snippet (the fine-tuning snippets train for a few steps)

# Float tolerance (atol and rtol) by dtype: float32 is the contract; half precisions compare at their resolution.
TOLERANCE = {"float64": 1e-5, "float32": 1e-5, "float16": 1e-3, "bfloat16": 1e-2}
# Keys of timing values (the Trainer's metrics): wall-clock, not the library's output, so not compared.
WALL_CLOCK = ("_runtime", "_per_second", "_preparation_time")
HUB_ID = re.compile(r"""["'](google/siglip2?-[A-Za-z0-9._-]+)["']""")
URL = re.compile(r"https?://([^\s\"'/]+)")


# --- snippets ------------------------------------------------------------------------------------------------


@dataclass
class Snippet:
    """One file of the corpus and what its header declares.

    Header comment fields (one per line, before the code): `# Source:` (required), `# Edits:`, `# Requires:` (a
    comma-separated list: `cuda` or importable package names), `# Oracle-fails:` (why transformers itself cannot
    run it on this machine; the test then skips when the oracle fails, and fails when the oracle fails
    without it), `# Differs-on-purpose:` (a difference siglip keeps on purpose, named in README: the test then
    expects the outputs to differ in the declared values, and fails the day they agree or differ elsewhere).
    """

    path: Path
    source: str
    header: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def requires(self) -> list[str]:
        declared = re.sub(r"\(.*?\)", "", self.header.get("requires", ""))  # without the (reasons)
        return [item.strip() for item in declared.split(",") if item.strip()]

    @property
    def hub_ids(self) -> list[str]:
        return sorted(set(HUB_ID.findall(self.source)))

    @classmethod
    def read(cls, path: Path) -> Snippet:
        source = path.read_text()
        header: dict[str, str] = {}
        key = None
        for line in source.splitlines():
            if not line.startswith("#"):
                break
            match = re.match(r"#\s*([A-Za-z-]+):\s*(.*)", line)
            if match and match.group(1).lower() in (
                "source",
                "edits",
                "requires",
                "oracle-fails",
                "differs-on-purpose",
            ):
                key = match.group(1).lower()
                header[key] = match.group(2).strip()
            elif key and line.startswith("#   "):  # a continuation line
                header[key] += " " + line[1:].strip()
            else:
                key = None
        if "source" not in header:
            raise ValueError(f"{path.name}: the header has no '# Source:' line")
        return cls(path, source, header)


def snippets() -> list[Snippet]:
    return [Snippet.read(path) for path in sorted(SNIPPETS.glob("*.py"))]


def missing_requirements(snippet: Snippet) -> list[str]:
    """The declared requirements this machine lacks (`cuda`: a CUDA device; others: an importable package)."""
    import importlib.util

    missing = []
    for requirement in snippet.requires:
        if requirement == "cuda":
            import torch

            if not torch.cuda.is_available():
                missing.append("a CUDA device")
        elif importlib.util.find_spec(requirement) is None:
            missing.append(f"the `{requirement}` package")
    return missing


# --- the two rewrites ----------------------------------------------------------------------------------------


def swap_imports(source: str) -> str:
    """The one change a user makes: `transformers` becomes `siglip` in every import statement, nothing else.

    `from transformers[.x] import ...` -> `from siglip[.x] import ...`; `import transformers` -> `import siglip as
    transformers` (so `transformers.X` in the code reads from siglip); `import transformers as t` -> `import siglip as t`.
    """
    lines = source.splitlines(keepends=True)
    for node in ast.walk(ast.parse(source)):
        row, col = node.lineno - 1 if hasattr(node, "lineno") else 0, getattr(node, "col_offset", 0)
        if isinstance(node, ast.ImportFrom) and node.level == 0 and _is_transformers(node.module or ""):
            head, tail = lines[row][:col], lines[row][col:]
            lines[row] = head + re.sub(r"^from(\s+)transformers\b", r"from\1siglip", tail, count=1)
        elif isinstance(node, ast.Import) and any(_is_transformers(alias.name) for alias in node.names):
            if len(node.names) != 1 or "." in node.names[0].name:
                raise NotImplementedError(f"line {row + 1}: rewrite `{lines[row].strip()}` by hand")
            alias = node.names[0].asname or "transformers"
            head, tail = lines[row][:col], lines[row][col:]
            lines[row] = head + re.sub(
                r"^import\s+transformers(\s+as\s+\w+)?", f"import siglip as {alias}", tail
            )
    return "".join(lines)


def _is_transformers(module: str) -> bool:
    return module == "transformers" or module.startswith("transformers.")


def serve_urls_locally(source: str, port: int) -> str:
    """The harness's own rewrite, applied to both runs: every http(s) URL in a string literal points at the
    loopback image server (`http://host/path` -> `http://127.0.0.1:PORT/host/path`). Comments are left alone."""
    lines = source.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    pieces, cursor = [], 0
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type != tokenize.STRING or not URL.search(token.string):
            continue
        start = offsets[token.start[0] - 1] + token.start[1]
        end = offsets[token.end[0] - 1] + token.end[1]
        pieces.append(source[cursor:start])
        pieces.append(URL.sub(lambda m: f"http://127.0.0.1:{port}/{m.group(1)}", token.string))
        cursor = end
    pieces.append(source[cursor:])
    return "".join(pieces)


def program(snippet: Snippet, library: str, port: int, swap: bool = True) -> str:
    """The source one run executes: the snippet with the harness's URL rewrite, plus the import swap for siglip
    (unless `swap` is False: the self-check runs transformers in both slots)."""
    source = serve_urls_locally(snippet.source, port)
    return swap_imports(source) if library == "siglip" and swap else source


# --- the offline hub cache -----------------------------------------------------------------------------------


def checkpoint_kind(hub_id: str) -> str:
    """Which tiny checkpoint stands in for a hub id: SigLIP, fixed-resolution SigLIP 2 or SigLIP 2 NaFlex."""
    if "naflex" in hub_id:
        return "naflex"
    return "siglip2" if hub_id.startswith("google/siglip2-") else "siglip"


def _layer(**extra: Any) -> dict[str, Any]:
    return dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2, **extra)


def _add_processor_class(directory: Path, filename: str, processor_class: str) -> None:
    """Hub repositories name their processor class in the preprocessor and tokenizer files (and hold none of the
    local paths and loading flags transformers writes after loading a tokenizer from a folder)."""
    path = directory / filename
    data = json.loads(path.read_text())
    data["processor_class"] = processor_class
    for key in ("vocab_file", "is_local", "local_files_only"):
        data.pop(key, None)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def build_checkpoint(kind: str, directory: Path, text_positions: int = 64) -> Path:
    """A tiny random checkpoint saved by transformers with the file layout of the hub's google/siglip* repositories
    (config.json, model.safetensors, preprocessor_config.json and the tokenizer's files; no processor_config.json)."""
    import torch
    import transformers

    import _torchvision  # noqa: F401  (before transformers; see the module)
    from _material import train_gemma_like
    from _reference import perturbed
    from conftest import _train as train_spiece

    transformers.logging.set_verbosity_error()
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if kind == "siglip":
        (directory / "spiece.model").write_bytes(train_spiece("nmt_nfkc"))
        tokenizer = transformers.SiglipTokenizer(
            str(directory / "spiece.model"), model_max_length=text_positions
        )
        image_processor = transformers.SiglipImageProcessor(size={"height": 32, "width": 32})
        config = transformers.SiglipConfig(
            text_config=_layer(vocab_size=len(tokenizer), max_position_embeddings=text_positions),
            vision_config=_layer(image_size=32, patch_size=8),
        )
        model, processor_class = transformers.SiglipModel(config), "SiglipProcessor"
    else:
        (directory / "tokenizer.model").write_bytes(train_gemma_like())
        tokenizer_class = "Siglip2Tokenizer" if kind == "naflex" else "GemmaTokenizer"
        settings = {"add_bos_token": False, "add_eos_token": True, "padding_side": "right", "model_max_length": 64,
                    "model_input_names": ["input_ids"], "tokenizer_class": tokenizer_class}  # fmt: skip
        (directory / "tokenizer_config.json").write_text(json.dumps(settings))
        tokenizer = getattr(transformers, tokenizer_class).from_pretrained(directory)
        text = _layer(vocab_size=len(tokenizer), max_position_embeddings=64)
        if (
            kind == "naflex"
        ):  # patches of 16 pixels as released (Siglip2Processor passes patch_size=16 by default)
            image_processor = transformers.Siglip2ImageProcessor(patch_size=16, max_num_patches=256)
            config = transformers.Siglip2Config(
                text_config=text, vision_config=_layer(patch_size=16, num_patches=16)
            )
            model, processor_class = transformers.Siglip2Model(config), "Siglip2Processor"
        else:
            image_processor = transformers.SiglipImageProcessor(size={"height": 32, "width": 32})
            config = transformers.SiglipConfig(
                text_config=text, vision_config=_layer(image_size=32, patch_size=8)
            )
            model, processor_class = transformers.SiglipModel(config), "SiglipProcessor"
    perturbed(model).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    image_processor.save_pretrained(directory)
    for filename in ("preprocessor_config.json", "tokenizer_config.json"):
        _add_processor_class(directory, filename, processor_class)
    special = ({"eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"} if kind == "siglip" else
               {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"})  # fmt: skip
    (directory / "special_tokens_map.json").write_text(
        json.dumps(special, indent=2) + "\n"
    )  # as the hub has it
    return directory


def build_hub_cache(hub_root: Path, hub_ids: list[str]) -> Path:
    """An HF_HUB_CACHE holding `models--google--X/snapshots/<sha>/...` and `refs/main` for every id.

    One checkpoint is built per kind (and per text length) and copied under each id; returns `hub_root`.
    """
    templates: dict[tuple[str, int], Path] = {}
    for hub_id in hub_ids:
        kind = checkpoint_kind(hub_id)
        positions = 16 if "so400m-patch14-224" in hub_id else 64  # as the released so400m/14 at 224
        if (kind, positions) not in templates:
            templates[kind, positions] = build_checkpoint(kind, hub_root / "_templates" / f"{kind}-{positions}",
                                                          positions)  # fmt: skip
        repo = hub_root / ("models--" + hub_id.replace("/", "--"))
        sha = hashlib.sha1(hub_id.encode()).hexdigest()
        shutil.copytree(templates[kind, positions], repo / "snapshots" / sha)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(sha)
    shutil.rmtree(hub_root / "_templates")
    return hub_root


# --- the image server ----------------------------------------------------------------------------------------

# Which of scikit-image's photos answers a URL: the first keyword found in it, else one chosen by its hash.
PHOTO_FOR = (("39769", "chelsea"), ("cat", "chelsea"), ("parrot", "astronaut"), ("000000000285", "rocket"),
             ("000000000776", "coffee"))  # fmt: skip
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def photo_bytes(path: str) -> tuple[bytes, str]:
    import skimage.data
    from PIL import Image

    name = next((photo for key, photo in PHOTO_FOR if key in path),
                PHOTOS[int(hashlib.sha1(path.encode()).hexdigest(), 16) % len(PHOTOS)])  # fmt: skip
    image = Image.fromarray(getattr(skimage.data, name)())
    buffer = io.BytesIO()
    if path.lower().endswith(".png"):
        image.save(buffer, format="PNG")
        return buffer.getvalue(), "image/png"
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue(), "image/jpeg"


class _PhotoHandler(http.server.BaseHTTPRequestHandler):
    cache: dict[str, tuple[bytes, str]] = {}  # noqa: RUF012  (shared by the server's threads)

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        path = self.path.split("?")[0]
        if path not in self.cache:
            self.cache[path] = photo_bytes(path)
        data, content_type = self.cache[path]
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, *args: Any) -> None:  # quiet
        pass


@contextlib.contextmanager
def image_server() -> Iterator[int]:
    """A loopback HTTP server answering every path with a real photo; yields its port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PhotoHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


# --- running -------------------------------------------------------------------------------------------------


def run_environment(hub_root: Path) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(key, None)
    env.update(
        HF_HOME=str(hub_root.parent / "hf_home"),
        HF_HUB_CACHE=str(hub_root),
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


class Runner:
    """A `_runner.py` process for one library: it imports the library once, then forks one child per snippet."""

    def __init__(self, library: str, env: dict[str, str]) -> None:
        self.library = library
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "_runner.py"), library],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
            bufsize=1,
        )

    def submit(self, program_path: Path, out: Path) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(
            json.dumps({"program": str(program_path), "out": str(out), "timeout": TIMEOUT_S}) + "\n"
        )
        self.process.stdin.flush()

    def result(self, out: Path) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.library} runner exited (code {self.process.poll()})")
        return json.loads((out / "result.json").read_text())

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


@dataclass
class Outcome:
    library: str
    ok: bool
    error: str  # "ExceptionType: message" when not ok
    traceback: str
    values: dict[str, Any]
    stderr_tail: str


def run_both(
    snippet: Snippet, runners: dict[str, Runner], port: int, work: Path, swap: bool = True
) -> dict[str, Outcome]:
    """Runs the snippet once per library, the two runs in parallel; returns each run's outcome."""
    import pickle

    outs = {}
    for library, runner in runners.items():
        out = work / snippet.name / library
        if out.exists():
            shutil.rmtree(out)
        (out / "cwd").mkdir(parents=True)
        program_path = out / f"{snippet.name}.py"
        program_path.write_text(program(snippet, library, port, swap))
        runner.submit(program_path, out)
        outs[library] = out
    outcomes = {}
    for library, runner in runners.items():
        result = runner.result(outs[library])
        values = {}
        if result["ok"]:
            values = pickle.loads((outs[library] / "values.pkl").read_bytes())
        stderr = (outs[library] / "stderr.txt").read_text(errors="replace")
        outcomes[library] = Outcome(library, result["ok"], result.get("error", ""), result.get("traceback", ""),
                                    values, stderr[-3000:])  # fmt: skip
    return outcomes


# --- comparing -----------------------------------------------------------------------------------------------


def differences(ours: Any, theirs: Any, path: str = "") -> list[str]:
    """Where two canonical values (see `_runner.canonical`) differ; [] when they agree."""
    import numpy as np

    if type(ours) is not type(theirs) and not (
        isinstance(ours, (int, float)) and isinstance(theirs, (int, float))
    ):
        return [f"{path}: {_describe(ours)} != {_describe(theirs)}"]
    if isinstance(theirs, tuple) and theirs and isinstance(ours, tuple) and ours and ours[0] != theirs[0]:
        return [f"{path}: {_describe(ours)} where transformers has {_describe(theirs)}"]
    if isinstance(theirs, tuple) and theirs and theirs[0] in ("tensor", "array", "image"):
        if ours[:3] != theirs[:3]:
            return [f"{path}: {ours[0]} {ours[1]} {ours[2]} != {theirs[0]} {theirs[1]} {theirs[2]}"]
        a, b = ours[3], theirs[3]
        if a.dtype.kind in "fc":
            tolerance = TOLERANCE.get(theirs[1].replace("torch.", ""), 1e-5)
            if not np.allclose(a, b, atol=tolerance, rtol=tolerance, equal_nan=True):
                diff = float(np.nanmax(np.abs(a.astype(np.float64) - b.astype(np.float64))))
                return [f"{path}: {theirs[1]} values differ (max |diff| {diff:.3g} > {tolerance})"]
        elif not np.array_equal(a, b):
            return [f"{path}: {theirs[1]} values differ at {int((a != b).sum())} of {a.size} positions"]
        return []
    if isinstance(theirs, tuple) and theirs and theirs[0] == "mapping":
        found = []
        for key in sorted(set(ours[1]) | set(theirs[1])):
            if key.endswith(WALL_CLOCK):  # the Trainer's timings: not the library's output
                continue
            if key not in ours[1]:
                found.append(f"{path}[{key!r}]: missing (transformers has {_describe(theirs[1][key])})")
            elif key not in theirs[1]:
                found.append(f"{path}[{key!r}]: extra (transformers has no such key)")
            else:
                found += differences(ours[1][key], theirs[1][key], f"{path}[{key!r}]")
        return found
    if isinstance(theirs, tuple) and theirs and theirs[0] == "seq":
        if len(ours[1]) != len(theirs[1]):
            return [f"{path}: {len(ours[1])} items != {len(theirs[1])}"]
        return [
            d
            for i, (a, b) in enumerate(zip(ours[1], theirs[1], strict=True))
            for d in differences(a, b, f"{path}[{i}]")
        ]
    if isinstance(theirs, float) or isinstance(ours, float):
        if not np.isclose(ours, theirs, atol=1e-5, rtol=1e-5, equal_nan=True):
            return [f"{path}: {ours!r} != {theirs!r}"]
        return []
    return [] if ours == theirs else [f"{path}: {_describe(ours)} != {_describe(theirs)}"]


def _describe(value: Any) -> str:
    if isinstance(value, tuple) and value and value[0] in ("tensor", "array", "image"):
        return f"{value[0]} {value[1]} {value[2]}"
    if isinstance(value, tuple) and value and value[0] in ("mapping", "seq"):
        return f"{value[0]} of {len(value[1])}"
    text = repr(value)
    return text if len(text) < 120 else text[:117] + "..."


def compare(siglip: dict[str, Any], transformers: dict[str, Any]) -> list[str]:
    """Differences between the module-level variables the two runs left behind."""
    found = []
    for name in sorted(set(siglip) | set(transformers)):
        if name not in siglip:
            found.append(
                f"{name}: not defined by the siglip run (transformers: {_describe(transformers[name])})"
            )
        elif name not in transformers:
            found.append(f"{name}: defined only by the siglip run ({_describe(siglip[name])})")
        else:
            found += differences(siglip[name], transformers[name], name)
    return found


# --- by hand -------------------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    """`python tests/compat/_corpus.py run|selfcheck [NAME ...]`: run snippets, print one line per snippet.

    `selfcheck` runs transformers in both slots, unswapped: every snippet the oracle runs must then PASS, which
    shows the harness itself (cache, server, seeding, comparison) is deterministic."""
    import tempfile

    sys.path.insert(0, str(TESTS))
    swap, names = argv[0] == "run", set(argv[1:])
    chosen = [s for s in snippets() if not names or s.name in names]
    keep = os.environ.get("SIGLIP_CORPUS_DIR")  # set it to keep the cache and every run's files for a look
    with (
        contextlib.nullcontext(keep) if keep else tempfile.TemporaryDirectory(prefix="siglip-corpus-") as tmp
    ):
        hub_root = Path(tmp) / "hub"
        shutil.rmtree(hub_root, ignore_errors=True)
        env = run_environment(hub_root)
        runners = {slot: Runner(slot if swap else "transformers", env) for slot in LIBRARIES}
        started = time.monotonic()
        build_hub_cache(hub_root, sorted({i for s in snippets() for i in s.hub_ids}))
        print(f"hub cache built in {time.monotonic() - started:.1f} s", flush=True)
        try:
            with image_server() as port:
                for snippet in chosen:
                    started = time.monotonic()
                    outcome = verdict(snippet, runners, port, Path(tmp) / "runs", swap)
                    print(f"{snippet.name} ({time.monotonic() - started:.1f} s): {outcome}", flush=True)
        finally:
            for runner in runners.values():
                runner.close()
    return 0


def verdict(snippet: Snippet, runners: dict[str, Runner], port: int, work: Path, swap: bool = True) -> str:
    """PASS / FAIL: ... / SKIP: ... for one snippet (the test and the command line share it)."""
    missing = missing_requirements(snippet)
    if missing:
        return "SKIP: needs " + ", ".join(missing)
    outcomes = run_both(snippet, runners, port, work, swap)
    oracle, ours = outcomes["transformers"], outcomes["siglip"]
    if not oracle.ok:
        if "oracle-fails" in snippet.header:
            return f"SKIP: transformers itself fails here ({snippet.header['oracle-fails']}): {oracle.error}"
        return f"FAIL: the transformers run failed (undeclared): {oracle.error}\n{oracle.traceback}"
    if not ours.ok:
        return f"FAIL: the siglip run failed: {ours.error}\n{ours.traceback}"
    found = compare(ours.values, oracle.values)
    if found:
        return "FAIL: outputs differ:\n  " + "\n  ".join(found[:40])
    return "PASS"


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("run", "selfcheck"):
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1:]))
