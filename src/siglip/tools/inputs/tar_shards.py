"""WebDataset `.tar` shards as a source of images: the shards a pattern names, the samples each holds (from the
tar headers, without reading the images), and one sample's image, read by seeking to it.

A sample is named `SHARD:KEY` (the shard as given, and the sample's WebDataset key) wherever a file is named by
its path: the rows `siglip embed` writes (in-process and on Ray), the lists of unreadable images, training's
log. Its image is its first member with an image extension (`jpg`, `png`, ...); a sample without one is
unreadable. `siglip embed` and `siglip train` both read shards through this module (training streams the
samples with webdataset, and counts them here).
"""

from __future__ import annotations

import glob
import itertools
import os
import re
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ...errors import DataError
from ..deps import require
from ..search.store import FileState
from .data import ImageProcessor, Sample, load_sample
from .files import IMAGE_EXTENSIONS, ImageScan, nothing_usable, os_error_reason, scan_images
from .video import Sampling, expand_videos

# A shard name ends in `.tar` (a compressed one in `.tar.gz`..., refused with a message when read), also inside
# a brace pattern (`{a.tar,b.tar}`): a folder such as `x.tarball/` is not a shard
_SHARD_NAME = re.compile(r"\.tar(\.(gz|bz2|xz|zst))?($|[,}])")


def is_shards(arg: str | os.PathLike) -> bool:
    """Whether a command-line input names WebDataset shards (a `.tar` path, glob or brace pattern)."""
    return _SHARD_NAME.search(os.fspath(arg)) is not None


def expand_shards(pattern: str) -> list[str]:
    """Shard paths of a path, glob or brace pattern (`{000000..000099}`), sorted."""
    braceexpand = require("braceexpand", "shards", "reading WebDataset shards")  # comes with webdataset
    shards: list[str] = []
    for part in braceexpand.braceexpand(pattern):
        shards += sorted(glob.glob(part)) if any(c in part for c in "*?[") else [part]
    missing = [s for s in shards if not Path(s).is_file()]
    if not shards or missing:
        raise DataError(f"WebDataset shards not found: {missing[:5] or pattern}")
    return shards


def sample_name(shard: str, key: str) -> str:
    """How a sample is named in outputs and messages: `SHARD:KEY`."""
    return f"{shard}:{key}"


def image_field(fields: Iterable[str]) -> str | None:
    """The field (extension) of a sample that holds its image: the first with an image extension."""
    return next((f for f in fields if "." + f.lower() in IMAGE_EXTENSIONS), None)


@dataclass(frozen=True)
class TarMember(FileState):
    """A sample of a shard as a file to embed: `path` is its name (`sample_name`), `size` and `mtime_ns` are
    its shard's (a changed shard is embedded again), and `offset`/`length` locate its image's bytes in the
    shard (offset -1: the sample has no image)."""

    shard: str = ""
    offset: int = -1
    length: int = 0

    def load(self, processor: ImageProcessor, **fields: object) -> Sample:
        """The sample's image preprocessed, or a `Sample` without inputs saying why it cannot be used."""
        if self.offset < 0:
            return Sample(None, self.path, "no image in the sample", **fields)
        try:
            with open(self.shard, "rb") as f:
                f.seek(self.offset)
                data = f.read(self.length)
        except OSError as err:
            return Sample(None, self.path, f"cannot be read: {os_error_reason(err)}", **fields)
        return load_sample(processor, data, self.path, **fields)


def tar_samples(shard: str) -> list[TarMember]:
    """The samples of a shard, in order, from its member headers (the tar is seeked over, not read).

    Members are grouped into samples as webdataset groups them: consecutive files of one key (its
    `base_plus_ext`), names without a key left out. A compressed shard is refused: an image is read by
    seeking to its offset in the file, which only an uncompressed tar has.
    """
    grouped = _grouped_members(shard, compressed=False)
    state = os.stat(shard)
    samples = []
    for key, by_field in grouped:
        image = by_field.get(image_field(by_field) or "")
        samples.append(
            TarMember(
                sample_name(shard, key),
                state.st_size,
                state.st_mtime_ns,
                state.st_ctime_ns,
                shard=shard,
                offset=image.offset_data if image else -1,
                length=image.size if image else 0,
            )
        )
    return samples


def count_samples(shard: str) -> int:
    """How many samples a shard holds, grouped as `tar_samples` groups them; compressed shards too (training
    streams them through webdataset, which reads gzip)."""
    return len(_grouped_members(shard, compressed=True))


def _grouped_members(shard: str, compressed: bool) -> list[tuple[str, dict[str, tarfile.TarInfo]]]:
    """(key, {extension: member}) of each sample of a shard, in order."""
    base_plus_ext = require("webdataset.tariterators", "shards", "reading WebDataset shards").base_plus_ext
    try:
        with tarfile.open(shard, "r:*" if compressed else "r:") as tar:
            members = [(*base_plus_ext(m.name), m) for m in tar if m.isfile()]
    except tarfile.ReadError as err:
        if compressed:
            raise DataError(f"cannot read WebDataset shard {shard}: not a tar file ({err})") from err
        raise DataError(
            f"cannot read WebDataset shard {shard}: not an uncompressed tar file ({err}); a compressed shard "
            "must be decompressed first (e.g. gunzip)"
        ) from err
    except (tarfile.TarError, OSError) as err:
        raise DataError(f"cannot read WebDataset shard {shard}: {err}") from err
    keyed = (m for m in members if m[0] is not None)
    return [
        (key, {ext.lower(): member for _, ext, member in group})
        for key, group in itertools.groupby(keyed, key=lambda m: m[0])
    ]


def scan_inputs(paths: Sequence[str | os.PathLike], sampling: Sampling | None = None) -> ImageScan:
    """`scan_images(paths)`, with each WebDataset shard pattern giving its samples (`TarMember`s) in its place;
    like `scan_images`, a file or sample named twice (`a.tar 'a*.tar'`) is in the scan once. With `sampling`,
    video files are found too and each gives its frames (`VideoFrame`s, see `siglip.tools.inputs.video`)."""
    files: dict[str, str | FileState] = {}  # by name; a name given again keeps its first place
    skipped: dict[tuple[str, str], None] = {}
    plain: list[str] = []

    def flush() -> None:
        if plain:
            found = scan_images(plain, videos=sampling is not None)
            files.update((path, path) for path in found.files)
            skipped.update(dict.fromkeys(found.skipped))
            plain.clear()

    for arg in map(os.fspath, paths):
        if is_shards(arg):
            flush()
            members = (m for shard in expand_shards(arg) for m in tar_samples(shard))
            files.update((m.path, m) for m in members)
        else:
            plain.append(arg)
    flush()
    scan = expand_videos(ImageScan(list(files.values()), list(skipped)), sampling)
    if not scan.files and scan.skipped:  # every video given is unreadable
        raise nothing_usable(scan.skipped)
    return scan
