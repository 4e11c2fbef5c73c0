"""Where checkpoint files come from and how weights are read and written.

A model is named by a local directory or a Hugging Face hub id (resolved through `huggingface_hub`, so its
cache, `HF_HUB_OFFLINE`, revisions and tokens behave as users expect). Everything that touches the
file system or the network for `from_pretrained` / `save_pretrained` lives here, so the model, tokenizer and
image-processor classes share one set of rules and one set of error messages.

Before the first hub request of a process, one TCP connection to the hub (3 s at most) tells whether it can
be reached; when it cannot, files come from the cache only, so that a machine without network fails in
seconds with one message rather than after huggingface_hub's retries (set HF_HUB_OFFLINE=1 to skip the look).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
import os
import pickle
import shutil
import socket
import tempfile
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, OfflineError

CONFIG_NAME = "config.json"
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
WEIGHTS_NAME = "pytorch_model.bin"
WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"

# Models shipped inside the package, loadable by their short name with no network.
BUNDLED_DIR = Path(__file__).parent.parent / "models"

# In order of preference: the first one a checkpoint has is the one loaded.
_WEIGHT_CANDIDATES = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME)


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


@dataclass(frozen=True)
class HubOptions:
    """How files of a hub repository are fetched: huggingface_hub's own options, with its defaults."""

    revision: str | None = None
    cache_dir: str | os.PathLike | None = None
    local_files_only: bool = False
    token: str | bool | None = None

    @classmethod
    def pop_from(cls, kwargs: dict[str, Any]) -> HubOptions | None:
        """The options among `from_pretrained` keyword arguments, removed from `kwargs` (None if none)."""
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
        for name in _WEIGHT_CANDIDATES:
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
        raise CheckpointError(f"'{self.name}' has no weights: looked for {', '.join(_WEIGHT_CANDIDATES)}.")

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
    """True when an earlier online lookup recorded that the repository does not have `filename`."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.file_download import _CACHED_NO_EXIST

    found = try_to_load_from_cache(repo_id, filename, cache_dir=options.cache_dir, revision=options.revision)
    return found is _CACHED_NO_EXIST


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


def load_state_dict(
    files: list[Path], device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """Read the tensors of one or more weight files onto `device`, floating ones cast to `dtype` if given.

    Safetensors are memory-mapped and read tensor by tensor, each cast as it is read (so a change of dtype
    never holds two copies of the model); `.bin` files (either `torch.save` format) are read by
    `load_pickled_tensors`, which refuses pickled code.
    """

    def cast(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor

    from safetensors import SafetensorError, safe_open

    state_dict: dict[str, torch.Tensor] = {}
    for file in files:
        if file.suffix == ".safetensors":
            try:
                with safe_open(file, framework="pt", device=str(device)) as f:
                    for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                        state_dict[key] = cast(f.get_tensor(key))
            except (SafetensorError, OSError) as err:
                raise CheckpointError(f"Cannot read safetensors file '{file}': {err}") from err
        else:
            loaded = load_pickled_tensors(file, device)
            if not isinstance(loaded, dict):
                raise CheckpointError(f"'{file}' does not hold a state dict.")
            state_dict.update({key: cast(value) for key, value in loaded.items()})
    return state_dict


def load_pickled_tensors(
    file: Path, device: str | torch.device = "cpu", error: type[CheckpointError] = CheckpointError
) -> Any:
    """What a `torch.save` file holds, in either format (the zip of torch >= 1.6 or the legacy plain pickle),
    read with `torch.load(weights_only=True)`: tensors, containers and numbers only, never pickled code.

    A file that holds code, or is damaged, raises a one-line `error` naming it.
    """
    try:
        with open(file, "rb") as f:
            zipped = zipfile.is_zipfile(f)  # only the zip format can be memory-mapped
        return torch.load(file, map_location=device, weights_only=True, mmap=zipped)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ValueError...
        if isinstance(err, OSError) and err.errno is not None:  # the file system refused, not the data
            raise error(f"'{file}' cannot be opened: {(err.strerror or str(err)).lower()}") from None
        # torch's message is a page of advice on unsafe loading; one of its lines says what was found
        lines = str(err).splitlines()
        found = next((ln for ln in lines if "GLOBAL" in ln), None) or next(
            (ln for ln in lines if "WeightsUnpickler error:" in ln), None
        )
        if isinstance(err, pickle.UnpicklingError) and found:
            found = found.split("WeightsUnpickler error:")[-1].split(". Please use")[0].strip().rstrip(".")
            raise error(
                f"Cannot read '{file}' as plain tensors: it holds pickled code or objects ({found}), which siglip "
                "never executes; re-save it as safetensors where you trust it"
            ) from None
        text = " ".join(str(err).split())
        raise error(f"'{file}' cannot be read (truncated or not a checkpoint): {text}") from err


@contextlib.contextmanager
def staged_directory(directory: str | os.PathLike, replaces: tuple[str, ...] = ()) -> Iterator[Path]:
    """Write files into a temporary folder, then move them into `directory` only if all were written.

    An error while saving leaves `directory` as it was: never a half-written file. Files of `directory`
    matching a `replaces` glob pattern that the new save does not contain (say, the `model.safetensors` of
    an earlier save now written as shards) are removed, so that no stale file shadows the new ones.
    """
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"Cannot save into '{target}': it is a file.")
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=target))
    try:
        yield staging
        written = {item.name for item in staging.iterdir()}
        stale = [p for pattern in replaces for p in target.glob(pattern) if p.name not in written]
        for item in staging.iterdir():
            if item.is_file():
                item.chmod(_FILE_MODE)  # some writers (safetensors) create files only their owner can read
            os.replace(item, target / item.name)
        for item in stale:
            item.unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _file_mode() -> int:
    umask = os.umask(0)  # reading the umask means setting it: once, at import
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()
# Weight files of every layout: a new save removes those of an earlier one it does not overwrite.
WEIGHT_FILE_PATTERNS = ("model*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin",
                        "pytorch_model.bin.index.json")  # fmt: skip


def save_state_dict(
    state_dict: dict[str, torch.Tensor], directory: Path, max_shard_size: int | str = "5GB"
) -> None:
    """Write `state_dict` as `model.safetensors`, or as shards with an index when larger than `max_shard_size`."""
    from huggingface_hub import save_torch_state_dict

    save_torch_state_dict(
        {k: v.detach().contiguous() for k, v in state_dict.items()},
        directory,
        max_shard_size=max_shard_size,
        metadata={"format": "pt"},
    )
