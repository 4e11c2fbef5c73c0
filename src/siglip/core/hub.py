"""Where checkpoint files come from: names, `Checkpoint`, `locate`, the hub options and the offline probe.

A model is named by a local directory or a Hugging Face hub id (resolved through `huggingface_hub`, so its
cache, `HF_HUB_OFFLINE`, revisions and tokens behave as users expect). Every `from_pretrained` finds its files
here, so the model, tokenizer and image-processor classes share one set of rules and one set of error
messages. Reading and writing weights is `weights.py`; writing a folder all or nothing is `staging.py`.

Before the first hub request of a process, one TCP connection to the hub (3 s at most) tells whether it can
be reached; when it cannot, files come from the cache only, so that a machine without network fails in
seconds with one message rather than after huggingface_hub's retries (set HF_HUB_OFFLINE=1 to skip the look).
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import socket
import urllib.parse
import urllib.request
from collections.abc import Collection
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, OfflineError
from .weights import WEIGHT_CANDIDATES

CONFIG_NAME = "config.json"


# Models shipped inside the package, loadable by their short name with no network.
BUNDLED_DIR = Path(__file__).parent.parent / "models"


def _offline_message(repo_id: str, filename: str) -> str:
    return (
        f"'{repo_id}' is not a local directory, and its file '{filename}' is not in the Hugging Face cache "
        "while the hub cannot be reached (offline, HF_HUB_OFFLINE=1 or local_files_only=True). "
        f"Download it once where there is network (`hf download {repo_id}`), or pass the path of a local "
        "directory that holds the checkpoint files (config.json and model.safetensors) instead of a hub id."
    )


def bundled_models() -> list[str]:
    """Short names of the models shipped inside the package (e.g. "siglip-tiny-fashion")."""
    if not BUNDLED_DIR.is_dir():
        return []
    return sorted(p.name for p in BUNDLED_DIR.iterdir() if (p / CONFIG_NAME).is_file())


# transformers' options of a model's `from_pretrained` that the other classes' `from_pretrained` accept and ignore
MODEL_LOADING_OPTIONS = ("dtype", "torch_dtype", "device_map", "max_memory", "offload_folder", "low_cpu_mem_usage",
                         "quantization_config", "attn_implementation")  # fmt: skip


@dataclass(frozen=True)
class HubOptions:
    """How files of a hub repository are fetched: huggingface_hub's own options, with its defaults."""

    revision: str | None = None
    cache_dir: str | os.PathLike | None = None
    local_files_only: bool = False
    token: str | bool | None = None

    @classmethod
    def pop_from(cls, kwargs: dict[str, Any], *, keep: Collection[str] = ()) -> HubOptions | None:
        """The options among `from_pretrained` keyword arguments, removed from `kwargs` (None if none).

        Removed and ignored too, as transformers ignores them: `trust_remote_code` (siglip never runs code from
        a checkpoint) and the options of loading weights (`MODEL_LOADING_OPTIONS`) but those in `keep`: a
        tokenizer, image processor or processor takes them and has no use for them.
        """
        kwargs.pop("trust_remote_code", None)
        for name in set(MODEL_LOADING_OPTIONS) - set(keep):
            kwargs.pop(name, None)
        given = {f.name: kwargs.pop(f.name) for f in fields(cls) if f.name in kwargs}
        return cls(**given) if given else None


@dataclass(frozen=True)
class Checkpoint:
    """Where the files of a checkpoint are: a local folder (a path, or a model bundled with siglip) or a hub
    repository, decided once by `locate`. Every `from_pretrained` takes one in place of a name, so a model and
    its processor loaded together resolve the name once."""

    name: str  # as the user gave it
    directory: Path | None  # the local folder; None for a hub repository
    options: HubOptions = HubOptions()

    @property
    def record_name(self) -> str:
        """How an index or output file records this model: a local folder by its absolute path, else the name."""
        return os.path.abspath(self.name) if os.path.isdir(self.name) else self.name

    def file(self, filename: str, *, required: bool = True) -> Path | None:
        """The local path of `filename` in this checkpoint (downloaded or taken from the cache for a hub id).

        A file the checkpoint does not have gives `None` when `required` is False and a `CheckpointError`
        otherwise. When the hub cannot be reached and the file is not cached, an `OfflineError` says so and
        how to use a local directory instead.
        """
        if self.directory is not None:
            candidate = self.directory / filename
            if candidate.is_file():
                return candidate
            if required:
                raise CheckpointError(f"Checkpoint directory '{self.directory}' has no '{filename}'.")
            return None
        try:
            return self._hub_file(filename, required)
        except CheckpointError as err:
            if "/" in self.name:
                raise
            raise type(err)(f"{err}{_bundled_hint(self.name)}") from err

    def _hub_file(self, filename: str, required: bool) -> Path | None:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            GatedRepoError,
            HFValidationError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        repo_id, options = self.name, self.options
        try:
            return Path(
                hf_hub_download(
                    repo_id,
                    filename,
                    revision=options.revision,
                    cache_dir=options.cache_dir,
                    local_files_only=options.local_files_only or not hub_reachable(),
                    token=options.token,
                    library_name="siglip",
                )
            )
        except GatedRepoError as err:
            raise CheckpointError(
                f"'{repo_id}' is a gated hub repository: accept its terms on the hub and log in (`hf auth login`)."
            ) from err
        except RepositoryNotFoundError as err:
            raise CheckpointError(
                f"'{repo_id}' is neither a local directory nor a hub repository you can access."
            ) from err
        except RevisionNotFoundError as err:
            raise CheckpointError(
                f"Hub repository '{repo_id}' has no revision '{options.revision}'."
            ) from err
        except LocalEntryNotFoundError as err:  # (a subclass of EntryNotFoundError: catch it first)
            if not required and _cached_as_missing(repo_id, filename, options):
                return None
            raise OfflineError(_offline_message(repo_id, filename)) from err
        except EntryNotFoundError as err:
            if required:
                raise CheckpointError(f"Hub repository '{repo_id}' has no file '{filename}'.") from err
            return None
        except HFValidationError as err:
            raise CheckpointError(f"No such directory, and not a valid hub id: '{repo_id}'.") from err

    def weight_files(self) -> list[Path]:
        """The weight files: one safetensors file, its shards, or legacy pickles (safetensors preferred).

        A checkpoint with none of the known files, or offline with none of them cached, raises a
        `CheckpointError` that lists what was looked for.
        """
        offline_error: OfflineError | None = None
        for name in WEIGHT_CANDIDATES:
            try:
                found = self.file(name, required=False)
            except OfflineError as err:  # this one is not cached; another format may be
                offline_error = err
                continue
            if found is None:
                continue
            if not name.endswith(".index.json"):
                return [found]
            index = read_json(found)
            if not isinstance(index.get("weight_map"), dict):
                raise CheckpointError(f"Shard index '{found}' has no 'weight_map'.")
            return [self.file(shard) for shard in sorted(set(index["weight_map"].values()))]
        if offline_error is not None:
            raise offline_error
        raise CheckpointError(f"'{self.name}' has no weights: looked for {', '.join(WEIGHT_CANDIDATES)}.")

    def __str__(self) -> str:
        return self.name


@functools.lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """Whether the hub accepts a connection within 3 s (looked at once per process; False when HF_HUB_OFFLINE
    is set). Behind a proxy, the proxy decides: the hub counts as reachable."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    endpoint = urllib.parse.urlsplit(constants.ENDPOINT)
    if urllib.request.getproxies().get(endpoint.scheme):
        return True
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=3).close()
    except OSError:
        return False
    return True


def locate(name_or_path: str | os.PathLike | Checkpoint, options: HubOptions | None = None) -> Checkpoint:
    """Decide once where a checkpoint named by the user lives.

    `name_or_path` is a local directory, the short name of a bundled model (`bundled_models()`) or a hub id
    such as `google/siglip-base-patch16-224`; a `Checkpoint` is returned as it is. Nothing is downloaded here:
    `Checkpoint.file` fetches each file when it is needed.
    """
    if isinstance(name_or_path, Checkpoint):
        if options is not None and options != name_or_path.options:
            raise TypeError("hub options were given for a Checkpoint that already has its own")
        return name_or_path
    name = os.fspath(name_or_path)
    options = options or HubOptions()
    path = Path(os.path.expanduser(name))
    if not path.exists() and name in bundled_models():
        path = BUNDLED_DIR / name
    if path.is_dir():
        return Checkpoint(name, path, options)
    if path.exists():
        raise CheckpointError(f"'{path}' is a file; pass the directory that holds the checkpoint files.")
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise CheckpointError(f"No such directory: '{name}' (and it is not a hub id like 'org/name').")
    return Checkpoint(name, None, options)


def _bundled_hint(name: str) -> str:
    """For a short name that is not a model: the models shipped with siglip, and the closest one."""
    available = bundled_models()
    close = difflib.get_close_matches(name, available, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"{hint} Models shipped with siglip: {', '.join(available) or 'none'}."


def _cached_as_missing(repo_id: str, filename: str, options: HubOptions) -> bool:
    """True when, offline, the cache says the repository goes without `filename`: an earlier online lookup
    recorded it missing, or the repository's snapshot is cached (its `config.json`) without it, where
    transformers goes on without an optional file too."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.file_download import _CACHED_NO_EXIST

    def cached(name: str) -> Any:
        return try_to_load_from_cache(repo_id, name, cache_dir=options.cache_dir, revision=options.revision)

    return cached(filename) is _CACHED_NO_EXIST or isinstance(cached(CONFIG_NAME), str)


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON object from `path`; a broken file gives an error that names it."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"'{path}' is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"'{path}' should hold a JSON object, found {type(data).__name__}.")
    return data
