"""`siglip embed --engine ray`: the embedding job on a Ray cluster, writing Parquet shards that a rerun resumes.

    report = embed_with_ray(["/data/photos"], "/data/embeddings", "google/siglip-base-patch16-224")

How the work is split (Ray Data, streaming):
- the driver lists the inputs (folders, files and globs by the one discovery rule; `.txt` lists of paths or
  URIs, one a line; `.parquet` lists with a `path` column; the samples of WebDataset `.tar` shards, from
  their tar headers, named `SHARD:KEY`) and cuts the list into shards of `shard_size`
  files, each cut into batches of `batch_size`: the batches an in-process run over the same list makes;
- CPU tasks read and decode a batch (`load_sample`, as the in-process job; URIs such as `s3://...` through
  fsspec and its filesystem package; a shard's sample by seeking to its image in the shard), unreadable files set aside with their reason;
- an actor pool runs the model, one actor per GPU (`num_gpus=1`), or CPU actors with a share of the cores
  when the cluster has no GPU; each actor loads the model once and embeds one decoded batch a call;
- the driver gathers a shard's batches and commits the shard: `part-NNNNN.parquet` (columns path, vector,
  model, dims: the schema of the one-machine job) written to a temporary name and renamed in one step.
  Its Parquet metadata records the model, its fingerprint (`model_fingerprint`, as the search index records
  it), the precision and image settings (`Embedder.settings`), the unreadable files and the nodes that embedded it.

The vectors are those of an in-process run over the same list with the same batch size, precision and
threads per model call, bit for bit (a CPU actor runs CPUs / actors threads; float sums can differ in the
last bit between thread counts).

Resume: the shard plan (`_plan.json`) is fixed by the first run; a rerun, after a crash or `kill -9` of the
driver, embeds only the shards that have no committed file, and again those that skipped a file which changed
since (restored, replaced, made readable: the in-process job's rule for unreadable files). Every path and URI must be readable from every
node (shared storage), as must the model (a bundled name, a path on shared storage or a hub id).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...core.auto import AutoConfig
from ...core.config import PretrainedConfig
from ...core.hub import locate
from ...errors import UsageError
from ..deps import require
from ..inputs.data import ImageProcessor, Sample, collate, load_sample
from ..inputs.files import find_images, skipped_as_json
from ..inputs.tar_shards import TarMember, expand_shards, is_shards, tar_samples
from ..search.fingerprint import model_fingerprint
from ..search.store import FileState, Seen, replace_atomically
from .calibration import check_takes_calibration, read_calibration, recorded, used_images
from .embedder import image_settings, load_processor, patch_budget
from .options import ModelOptions
from .readers import SHARD_METADATA, shard_record
from .writers import parquet_schema, parquet_table, settings_differences

logger = logging.getLogger("siglip")

PLAN_FILE = "_plan.json"  # leading _ or .: not data to pyarrow or Ray Data readers of the folder
MANIFEST_FILE = "_manifest.json"
LIST_SUFFIXES = (".txt", ".parquet")


@dataclass
class RayEmbedReport:
    """What `embed_with_ray` did."""

    out: Path
    manifest: Path
    count: int  # rows in all shards
    embedded: int  # images embedded by this run
    failed: int  # unreadable files found by this run
    shards: int  # shards in the plan
    resumed: int  # shards an earlier run had committed
    skipped: list[tuple[str, str]] = field(default_factory=list)  # all unreadable files: (path, reason)
    nodes: int = 0  # nodes whose actors embedded this run's shards


def list_inputs(inputs: Sequence[str | os.PathLike]) -> list[str | TarMember]:
    """The images named by `inputs`: folders, files and globs (see `find_images`), `.txt` lists (one path or
    URI a line) and `.parquet` lists (a `path` column), URIs (`scheme://...`), and the samples of WebDataset
    shards (see `siglip.tools.inputs.tar_shards`), in order, without duplicates. A listed relative path is relative
    to its list file."""
    found: dict[str | TarMember, None] = {}
    local: list[str] = []

    def flush() -> None:
        found.update(dict.fromkeys(find_images(local)) if local else {})
        local.clear()

    for item in map(os.fspath, inputs):
        if "://" in item:
            flush()
            found[item] = None
        elif is_shards(item):
            flush()
            found.update(dict.fromkeys(m for shard in expand_shards(item) for m in tar_samples(shard)))
        elif item.lower().endswith(LIST_SUFFIXES) and os.path.isfile(item):
            flush()
            found.update(dict.fromkeys(_listed(Path(item))))
        else:
            local.append(item)
    flush()
    return list(found)


def _listed(path: Path) -> list[str]:
    if path.suffix.lower() == ".parquet":
        pq = require("pyarrow.parquet", "parquet", "reading a Parquet list of images")
        table = pq.read_table(path)
        if "path" not in table.column_names:
            raise UsageError(f"{path} has no 'path' column (columns: {table.column_names})")
        entries = [str(p) for p in table.column("path").to_pylist() if p]
    else:
        entries = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [e if "://" in e else os.path.normpath(path.parent / e) for e in entries]


def embed_with_ray(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    model: str,
    *,
    options: ModelOptions | None = None,
    batch_size: int = 32,
    shard_size: int = 10_000,
    address: str | None = None,
    actors: int | None = None,
    progress: bool | None = None,
    **option_values: Any,
) -> RayEmbedReport:
    """Embed the images named by `inputs` into Parquet shards in the folder `out` on Ray (see the module doc).

    How the model runs is `options`, or the `ModelOptions` of `option_values` (`precision`, `compile`, ...), as
    for `Embedder.from_pretrained`: the precision is resolved by each actor on its device, and the manifest lists
    the precisions the shards were made in; the images are preprocessed by the decoding tasks, with the
    driver's processor.

    `address` joins a running cluster ("auto", "ray://host:port"); without it a local one starts (or the one
    this process already started is used). `actors` is the size of the model actor pool (default: one per
    GPU, else one per 4 CPUs).
    """
    options = ModelOptions.of(options, **option_values)
    ray = require("ray", "ray", "siglip embed --engine ray")
    pa = require("pyarrow", "ray", "siglip embed --engine ray")
    if batch_size < 1 or shard_size < 1:
        raise UsageError("--batch-size and --shard-size must be at least 1")
    files = list_inputs(inputs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shard_size = -(-shard_size // batch_size) * batch_size  # whole batches: those of an in-process run
    checkpoint = locate(model)
    processor = load_processor(checkpoint, options)
    images = image_settings(processor)  # the actors get preprocessed images: the driver's processor decides
    config = AutoConfig.from_pretrained(checkpoint)
    # a NaFlex budget is part of the plan: shards made at two budgets would not be comparable; so are the
    # options asked for, which a resumed run must repeat
    plan = _plan(out, files, shard_size, batch_size, patch_budget(processor), _asked(options, images, config))
    name = checkpoint.record_name
    dims = config.text_config.projection_size
    fingerprint = model_fingerprint(name)
    done = {i for i in range(plan["shards"]) if _shard_path(out, i).exists()}
    inputs = {f.path if isinstance(f, TarMember) else f: f for f in files}
    changed = {i for i in done if _skipped_changed(_check_shard(_shard_path(out, i), fingerprint), inputs)}
    if changed:
        logger.info("%d shard(s) skipped files that changed since: embedding them again", len(changed))
    done -= changed
    pending = [i for i in range(plan["shards"]) if i not in done]
    embedded = failed = 0
    nodes: set[str] = set()
    if pending:
        if not ray.is_initialized():
            ray.init(
                address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING
            )
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        actors = actors or gpus or max(1, int(resources.get("CPU", 1)) // 4)
        cpus = resources.get("CPU", 1)
        # GPU actors: the GPU runs the model, every core decodes. CPU actors: the model is the bottleneck
        # (decoding is ~2% of a CPU job), so each actor threads over its share of all cores and holds all
        # but half a CPU of it in Ray's accounting, which leaves room for the decoding tasks of half a CPU.
        threads = 0 if gpus else max(1, int(cpus) // actors)
        decode_cpus = 1 if gpus else 0.5
        actor_cpus = 0 if gpus else max(0.5, cpus / actors - decode_cpus)
        schema = parquet_schema(pa, dims)
        rows = [
            {
                "shard": s,
                "batch": b,
                "paths": json.dumps([_entry(f) for f in files[start : start + batch_size]]),
            }
            for s in pending
            for b, start in enumerate(
                range(s * shard_size, min((s + 1) * shard_size, len(files)), batch_size)
            )
        ]
        batches_in = {
            s: len(range(s * shard_size, min((s + 1) * shard_size, len(files)), batch_size)) for s in pending
        }
        ray.data.DataContext.get_current().enable_progress_bars = False  # ours is below
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        # decoding stays in CPU tasks: the two steps' differing scheduling keeps Ray from fusing them (Ray
        # 2.64 drops scheduling_strategy here, hence the `ray` extra's upper bound)
        ds = ds.map(_Decode(processor.image_processor), num_cpus=decode_cpus, scheduling_strategy="DEFAULT")
        ds = ds.map(
            _EmbedActor,
            fn_constructor_kwargs={
                "model": name,
                "options": options,
                "threads": threads,
            },
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_gpus=1 if gpus else 0,
            num_cpus=actor_cpus,
            scheduling_strategy="SPREAD",  # the actors over the nodes
        )
        gathered: dict[int, dict[int, dict[str, Any]]] = {s: {} for s in pending}
        from tqdm.auto import tqdm

        show = progress if progress is not None else False
        with tqdm(total=len(rows), unit="batch", desc="embedding (ray)", disable=not show) as bar:
            for row in ds.iter_rows():
                shard, batch = int(row["shard"]), int(row["batch"])
                gathered[shard][batch] = row
                bar.update(1)
                if len(gathered[shard]) < batches_in[shard]:
                    continue
                complete = gathered.pop(shard)
                parts = [complete[b] for b in range(batches_in[shard])]
                record = _commit_shard(pa, schema, out, shard, name, fingerprint, images, parts)
                embedded += record["count"]
                failed += len(record["skipped"])
                nodes.update(record["nodes"])
    return _finish(out, plan, name, dims, fingerprint, embedded, failed, len(done), nodes)


def _asked(options: ModelOptions, images: dict[str, Any], config: PretrainedConfig) -> dict[str, Any]:
    """What the run asks of the embeddings: the precision word (each actor resolves it on its device: the
    shards record what it became), for int8-static the digest of the calibration images the model uses (as
    the shards record it), and the pixels' settings. Calibration with another precision is refused here,
    before the actors would refuse it."""
    asked = {"precision": options.precision_word, **images}
    if options.calibration:
        check_takes_calibration(options.precision_word)
        _, digest = used_images(read_calibration(options.calibration), config)
        asked["calibration"] = recorded(digest)
    return asked


def _plan(
    out: Path,
    files: list[str | TarMember],
    shard_size: int,
    batch_size: int,
    max_num_patches: int | None,
    asked: dict[str, Any],
) -> dict[str, Any]:
    """The shard plan of `out`: made by the first run, checked by the next ones (same inputs, same cuts, for
    a NaFlex model the same patch budget, and the same `asked` settings: shards of another precision or
    calibration would not be comparable with those already written)."""
    names = (f.path if isinstance(f, TarMember) else f for f in files)
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()
    plan = {
        "files": len(files),
        "files_sha256": digest,
        "shard_size": shard_size,
        "batch_size": batch_size,
        "shards": -(-len(files) // shard_size),
    }
    if max_num_patches is not None:  # (only then: the plans of fixed-size models stay as they were)
        plan["max_num_patches"] = max_num_patches
    path = out / PLAN_FILE
    if path.exists():
        earlier = json.loads(path.read_text())
        made_with = earlier.pop("settings", None)  # None: a plan of a version that did not record them
        if earlier != plan:
            raise UsageError(
                f"'{out}' holds a run over other inputs or with other --batch-size/--shard-size/"
                f"--max-num-patches ({earlier['files']} files, shards of {earlier['shard_size']}, patch budget "
                f"{earlier.get('max_num_patches', '-')}): rerun it as it was, or "
                "write to another folder"
            )
        # a run that wrote no shard (it failed first) binds nothing: its plan takes these settings
        committed = any(_shard_path(out, shard).exists() for shard in range(plan["shards"]))
        if made_with not in (None, asked) and committed:
            raise UsageError(
                f"'{out}' holds shards embedded with other settings ({settings_differences(made_with, asked)}): "
                "rerun it with the same options, or write to another folder"
            )
        if made_with == asked:
            return {**plan, "settings": asked}
    plan["settings"] = asked
    replace_atomically(path, lambda tmp: tmp.write_text(json.dumps(plan, indent=2) + "\n"))
    return plan


def _shard_path(out: Path, shard: int) -> Path:
    return out / f"part-{shard:05d}.parquet"


def _check_shard(path: Path, fingerprint: str) -> dict[str, Any]:
    """The record of a committed shard, refused when it is no shard of ours or of other weights."""
    record = shard_record(path)
    if record is None:
        raise UsageError(f"{path} is not a shard of `siglip embed --engine ray`: write to another folder")
    if record["fingerprint"] != fingerprint:
        raise UsageError(
            f"{path} was embedded by other weights (model {record['model']}, fingerprint "
            f"{record['fingerprint'][:12]}): use that model, or write to another folder"
        )
    return record


def _skipped_changed(record: dict[str, Any], inputs: dict[str, str | TarMember]) -> bool:
    """Whether a file the shard skipped as unreadable changed since (restored, replaced, made readable): as the
    in-process job embeds such a file again, the shard is embedded again. A URI's state is not known: not
    retried. A shard of an earlier version, which did not record the states, is retried once."""
    seen = record.get("skipped_as_seen")
    for path, _reason in record["skipped"]:
        now = _state_now(inputs.get(path, path))
        was = None if seen is None else seen.get(path)
        if now is not None and (was is None or not Seen(was[0], was[1], False, was[2]).current(now)):
            return True
    return False


def _state_now(entry: str | dict[str, Any] | TarMember) -> FileState | None:
    """The state of an input as the decoding tasks and the driver see it now (a missing file: all -1; a
    shard's sample: the shard's state as listed), None for a URI."""
    if isinstance(entry, dict):
        entry = TarMember(**entry)
    if isinstance(entry, FileState):
        return entry
    if "://" in entry:
        return None
    try:
        return FileState.of(entry)
    except OSError:
        return FileState(entry, -1, -1, -1)


def _commit_shard(
    pa: Any,
    schema: Any,
    out: Path,
    shard: int,
    model: str,
    fingerprint: str,
    images: dict[str, Any],
    parts: list[dict[str, Any]],
) -> dict[str, Any]:
    """Write one shard from its embedded batches, in order, atomically; returns its record (with `images`,
    the `image_settings` of the driver's processor)."""
    import pyarrow.parquet as pq

    paths = [p for part in parts for p in json.loads(part["paths"])]
    vectors = np.concatenate(
        [
            np.asarray(part["vectors"], np.float32).reshape(-1, schema.field("vector").type.list_size)
            for part in parts
        ]
    )
    failed = [f for part in parts for f in json.loads(part["failed"])]  # (path, reason, state when it failed)
    skipped = [(path, reason) for path, reason, _ in failed]
    calibration = {"calibration": parts[0]["calibration"]} if parts[0].get("calibration") else {}
    record = {
        "model": model,
        "fingerprint": fingerprint,
        "precision": parts[0]["precision"],
        **calibration,
        **images,
        "count": len(paths),
        "skipped": skipped,
        "skipped_as_seen": {path: state for path, _, state in failed if state is not None},
        "nodes": sorted({part["node"] for part in parts}),
    }
    table = parquet_table(pa, schema, model, paths, vectors)
    table = table.replace_schema_metadata({SHARD_METADATA: json.dumps(record)})
    replace_atomically(_shard_path(out, shard), lambda tmp: pq.write_table(table, tmp))
    return record


def _finish(
    out: Path,
    plan: dict[str, Any],
    model: str,
    dims: int,
    fingerprint: str,
    embedded: int,
    failed: int,
    resumed: int,
    nodes: set[str],
) -> RayEmbedReport:
    """Write the manifest of a complete run (all shards committed) and report."""
    records = [shard_record(_shard_path(out, i)) or {} for i in range(plan["shards"])]
    skipped = [tuple(s) for r in records for s in r["skipped"]]
    manifest = {
        "model": model,
        "fingerprint": fingerprint,
        "dims": dims,
        "precision": sorted({r["precision"] for r in records}),
        **_calibrations(records),
        "count": sum(r["count"] for r in records),
        "format": "parquet",
        "shards": [_shard_path(out, i).name for i in range(plan["shards"])],
        "skipped": skipped_as_json(skipped),
    }
    path = out / MANIFEST_FILE
    replace_atomically(path, lambda tmp: tmp.write_text(json.dumps(manifest, indent=2) + "\n"))
    return RayEmbedReport(
        out, path, manifest["count"], embedded, failed, plan["shards"], resumed, skipped, len(nodes)
    )


def _calibrations(records: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The int8-static calibrations the shards of `records` were made with (none: nothing to record)."""
    calibrations = sorted({r["calibration"] for r in records if "calibration" in r})
    return {"calibration": calibrations} if calibrations else {}


def _entry(file: str | TarMember) -> str | dict[str, Any]:
    """How an input travels to the decoding tasks, as JSON: a path or URI, or a shard's sample as a dict."""
    return dataclasses.asdict(file) if isinstance(file, TarMember) else file


def _state_list(entry: str | dict[str, Any]) -> list[int] | None:
    """`_state_now` as JSON: [size, mtime_ns, ctime_ns]."""
    state = _state_now(entry)
    return None if state is None else [state.size, state.mtime_ns, state.ctime_ns]


_INPUT = "input_"  # column-name prefix of the model inputs a decode task hands to the model actors


class _Decode:
    """A Ray task body: read and preprocess one batch of files (as the in-process DataLoader workers do)."""

    def __init__(self, processor: ImageProcessor) -> None:
        self.processor = processor

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        paths = json.loads(row["paths"])
        batch = collate([self._sample(p, i) for i, p in enumerate(paths)])
        return {
            "shard": row["shard"],
            "batch": row["batch"],
            "paths": json.dumps([s.source for s in batch.loaded]),
            "failed": json.dumps([(s.source, s.reason, _state_list(paths[s.index])) for s in batch.failed]),
            # the model inputs, a column each (pixel_values; NaFlex adds pixel_attention_mask, spatial_shapes)
            **{_INPUT + name: value.numpy() for name, value in batch.inputs.items()},
        }

    def _sample(self, source: str | dict[str, Any], index: int) -> Sample:
        """A local path goes to the processor as it is; a URI is read through fsspec first; a shard's sample
        (a dict, see `_entry`) is read from its shard."""
        if isinstance(source, dict):
            return TarMember(**source).load(self.processor, index=index)
        if "://" not in source:
            return load_sample(self.processor, source, source, index=index)
        fsspec = require("fsspec", "ray", f"reading {source}")
        try:
            with fsspec.open(source, "rb") as f:
                data = f.read()
        except (OSError, ValueError, ImportError) as err:
            return Sample(None, source, f"cannot be read: {err}", index=index)
        return load_sample(self.processor, data, source, index=index)


class _EmbedActor:
    """A Ray actor: the model, loaded once, embedding one decoded batch a call."""

    def __init__(self, model: str, options: ModelOptions, threads: int) -> None:
        import ray
        import torch

        from .embedder import Embedder

        if threads:
            torch.set_num_threads(threads)
        self.embedder = Embedder.from_pretrained(model, options=options)
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        import torch

        inputs = {
            key.removeprefix(_INPUT): torch.from_numpy(np.ascontiguousarray(value))
            for key, value in row.items()
            if key.startswith(_INPUT)
        }
        loaded = inputs and len(next(iter(inputs.values())))
        vectors = (
            self.embedder.embed_inputs(inputs) if loaded else np.empty((0, self.embedder.dims), np.float32)
        )
        return {
            "shard": row["shard"],
            "batch": row["batch"],
            "paths": row["paths"],
            "failed": row["failed"],
            "vectors": vectors,
            "node": self.node,
            "precision": self.embedder.mode.precision,
            # int8-static: the digest of its calibration images ("": none; a column of strings for Ray Data)
            "calibration": self.embedder.settings.get("calibration", ""),
        }
