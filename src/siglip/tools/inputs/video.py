"""Video files as a source of images: the frames a sampling rule picks, each a row addressed
`<video>#t=<seconds>` (`media.frame_address`), decoded with PyAV (the `video` extra, which bundles FFmpeg).

Two rules (`Sampling`):
- every N seconds (default 2 s): the frames shown at 0, N, 2N, ... seconds, from the container's duration
  (listing them decodes only the first frame, to know there is one);
- scene changes (`scenes=THRESHOLD`): the first frame, then each frame that differs from the last one sampled
  by more than THRESHOLD, the mean absolute difference of 32 x 32 greyscale copies as a fraction of full
  scale (0: every frame, 1: only the first; 0.1 is a cut between two different shots, 0.02 a camera pan).
  Listing the frames decodes the whole video once.

A frame is loaded by seeking to the keyframe before it and decoding forward; a process keeps its last video
open, so the next frames of that video (a batch holds consecutive ones) are decoded forward from there, unless
a keyframe comes first (judged by the keyframe spacing seen so far), where a seek saves decoding. A video that cannot be opened, has no video stream or no frame is left out of the scan with the
reason, as an unreadable image is; a frame that cannot be decoded (a truncated file) is an unreadable row.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..deps import require
from ..search.store import FileState
from ..values import Number
from .data import ImageProcessor, Sample, load_sample
from .files import ImageScan, is_video_file, os_error_reason
from .media import frame_address

DEFAULT_EVERY_S = 2.0
EVERY = Number(0, above=True)  # the rule of `Sampling.every` and --video-every
SCENE_THRESHOLD = Number(0, 1)  # the rule of `Sampling.scenes` and --video-scenes
SCENE_SIDE = 32  # the side of the greyscale copies that scene detection compares
FORWARD_S = 3.0  # until keyframes were seen, a frame at most this far ahead is reached by decoding forward
_EPS = 1e-3  # addresses keep milliseconds: a frame within this of a time is the frame at that time


@dataclass(frozen=True)
class Sampling:
    """Which frames of a video become rows: one every `every` seconds, or with `scenes` (a threshold from 0
    to 1) one per scene change (see the module doc)."""

    every: float = DEFAULT_EVERY_S
    scenes: float | None = None

    def __post_init__(self) -> None:
        EVERY.check(self.every, "video sampling: every (seconds)")
        if self.scenes is not None:
            SCENE_THRESHOLD.check(self.scenes, "video sampling: the scene threshold")

    def key(self) -> str:
        """The rule as text, recorded with what it sampled (an index reuses frame times only under it)."""
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class VideoFrame(FileState):
    """A frame of a video as a file to embed: `path` is its address (`frame_address(video, seconds)`), `size`
    and `mtime_ns` are its video's (a changed video is sampled and embedded again)."""

    video: str = ""
    seconds: float = 0.0

    def load(self, processor: ImageProcessor, **fields: object) -> Sample:
        """The frame preprocessed, or a `Sample` without inputs saying why it cannot be used."""
        try:
            image = read_frame(self.video, self.seconds)
        except VideoError as err:
            return Sample(None, self.path, str(err), **fields)
        return load_sample(processor, image, self.path, **fields)


class VideoError(Exception):
    """Why a video or one of its frames cannot be used, without the video's name (lists name it)."""


def _av() -> Any:
    return require("av", "video", "reading video files")


def _open(video: str) -> Any:
    """The container of `video`, or a `VideoError` saying why it cannot be read."""
    av = _av()
    try:
        container = av.open(video)
    except OSError as err:  # the file system refused (PyAV's FileNotFoundError, PermissionError...)
        raise VideoError(f"cannot be read: {os_error_reason(err)}") from None
    except av.FFmpegError as err:  # the bytes: not a container FFmpeg knows, or one cut short
        raise VideoError(
            f"is not a video file FFmpeg can read (truncated or corrupt?): {err.strerror}"
        ) from None
    if not container.streams.video:
        container.close()
        raise VideoError("has no video stream")
    return container


def frame_times(video: str, sampling: Sampling) -> list[float]:
    """The times (seconds, millisecond precision) of the frames `sampling` picks in `video`; a `VideoError`
    when it cannot be read or has no frame."""
    container = _open(video)
    try:
        stream = container.streams.video[0]
        if sampling.scenes is not None:
            times = _scene_times(container, stream, sampling.scenes)
        else:
            if next(container.decode(stream), None) is None:  # a stream without one decodable frame
                raise VideoError("has no frames")
            start, duration = _timeline(container, stream)
            count = int(np.floor(duration / sampling.every - _EPS)) + 1 if duration > 0 else 0
            times = [start + i * sampling.every for i in range(count)]
    except _av().FFmpegError as err:
        raise VideoError(f"cannot be decoded (truncated or corrupt?): {err.strerror}") from None
    finally:
        container.close()
    if not times:
        raise VideoError("has no frames")
    return [round(t, 3) for t in times]


def _timeline(container: Any, stream: Any) -> tuple[float, float]:
    """(start, duration) of a video stream in seconds, from its header, else the container's, else the
    timestamps of its packets (demuxed, not decoded)."""
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    if stream.duration:
        return start, float(stream.duration * stream.time_base)
    if container.duration:
        return start, container.duration / 1_000_000
    container.seek(0)  # back from the first frame decoded
    ends = [
        float((p.pts + (p.duration or 0)) * p.time_base) for p in container.demux(stream) if p.pts is not None
    ]
    return start, max(ends, default=start) - start


def _scene_times(container: Any, stream: Any, threshold: float) -> list[float]:
    """The times of the first frame and of each frame that differs from the last one kept by more than
    `threshold` (see the module doc)."""
    stream.thread_type = "AUTO"
    times, kept = [], None
    for frame in container.decode(stream):
        small = frame.reformat(width=SCENE_SIDE, height=SCENE_SIDE, format="gray").to_ndarray()
        small = small.astype(np.float32) / 255
        if kept is None or float(np.abs(small - kept).mean()) > threshold:
            times.append(float(frame.time or 0.0))
            kept = small
    return times


def read_frame(video: str, seconds: float) -> Any:
    """The frame of `video` shown at `seconds`, as an upright RGB PIL image; a `VideoError` when there is none.
    Thread-safe (the server's thumbnails): one thread at a time uses the process's open video."""
    try:
        st = os.stat(video)
    except OSError as err:
        raise VideoError(f"cannot be read: {os_error_reason(err)}") from None
    version = (video, st.st_ino, st.st_size, st.st_mtime_ns)  # a video rewritten since is opened again
    with _lock:
        return _upright(_frame_at(version, seconds))


def _frame_at(version: tuple, seconds: float) -> Any:
    global _decoder
    if _decoder is None or _decoder.version != version:
        if _decoder is not None:
            _decoder.close()
            _decoder = None
        _decoder = _Decoder(version[0], version)
    try:
        return _decoder.frame_at(seconds)
    except _av().FFmpegError:
        _decoder.close()
        _decoder = None
        # FFmpeg's own words say little here (a failed seek is "Operation not permitted")
        raise VideoError(f"frame at {seconds:.3f} s cannot be decoded (truncated or corrupt?)") from None


def _upright(frame: Any) -> Any:
    """A decoded frame as an RGB PIL image the way players show it: turned by the rotation the video's
    display matrix records (a phone held upright records its landscape sensor's frames and a 90 degree turn)."""
    from PIL import Image

    image = frame.to_image()
    turn = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}
    rotation = round(frame.rotation or 0) % 360  # counterclockwise, as PyAV reads it, as PIL turns
    return image.transpose(turn[rotation]) if rotation in turn else image


class _Decoder:
    """One open video, decoding forward from where the last frame asked for was, or seeking when a keyframe
    lies between (see the module doc)."""

    def __init__(self, video: str, version: tuple) -> None:
        self.version = version
        self.container = _open(video)
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self.frames: Any = None
        self.shown: Any = None  # the last frame at or before the last time asked for
        self.ahead: Any = None  # a frame decoded past that time
        rate = self.stream.average_rate
        self.gap = 2 / float(rate) if rate else 0.5  # more past the last frame: beyond the end of the video
        self.keyframe: float | None = None  # the time of the last keyframe decoded
        self.keyframe_gap = 0.0  # the longest time between two consecutive keyframes decoded

    def frame_at(self, seconds: float) -> Any:
        if self._seek_for(seconds):
            self.container.seek(int(seconds / self.stream.time_base), stream=self.stream, backward=True)
            self.frames, self.shown, self.ahead, self.keyframe = (
                self.container.decode(self.stream),
                None,
                None,
                None,
            )
        while True:
            if self.ahead is None:
                self.ahead = next(self.frames, None)
                if self.ahead is None:  # the end of the video
                    break
                if self.ahead.key_frame:
                    time = self.ahead.time or 0.0
                    if self.keyframe is not None:
                        self.keyframe_gap = max(self.keyframe_gap, time - self.keyframe)
                    self.keyframe = time
            if (self.ahead.time or 0.0) > seconds + _EPS:
                break
            self.shown, self.ahead = self.ahead, None
        frame = self.shown if self.shown is not None else self.ahead  # before the first frame: the first
        if frame is None:
            raise VideoError(f"has no frame at {seconds:.3f} s (truncated?)")
        if self.ahead is None and seconds - (frame.time or 0.0) > self.gap:
            raise VideoError(f"has no frame at {seconds:.3f} s: it ends at {frame.time:.3f} s (truncated?)")
        return frame

    def _seek_for(self, seconds: float) -> bool:
        """Whether to reach `seconds` by seeking: it is before the frames decoded, or (by the keyframe spacing
        seen so far, else `FORWARD_S`) a keyframe comes before it, from which less is decoded."""
        here = self.shown if self.shown is not None else self.ahead
        if here is None or seconds < (here.time or 0.0) - _EPS:
            return True
        if self.keyframe is not None and self.keyframe_gap > 0:
            return seconds >= self.keyframe + self.keyframe_gap
        return seconds - (here.time or 0.0) > FORWARD_S

    def close(self) -> None:
        self.container.close()


_decoder: _Decoder | None = None  # this process's open video (each DataLoader worker has its own)
_inherited: list[_Decoder] = []  # a forked child's copies of its parent's decoder, never used nor freed


_lock = threading.Lock()  # held while a thread uses `_decoder`


def _forget_decoder() -> None:
    """In a forked child (a DataLoader worker), set the parent's open video aside: FFmpeg's decoding threads
    did not come along, so using or even closing the copy would wait on them forever (and a lock a parent's
    thread held would stay held)."""
    global _decoder, _lock
    _lock = threading.Lock()
    if _decoder is not None:
        _inherited.append(_decoder)
        _decoder = None


os.register_at_fork(after_in_child=_forget_decoder)


# (video, its size, its mtime_ns) -> the frame times sampled from it in that state before, or None
Sampled = Callable[[str, int, int], "list[float] | None"]


def video_frames(video: str, sampling: Sampling, sampled: Sampled | None = None) -> list[VideoFrame]:
    """The frames `sampling` picks in `video` (a stored path) as rows to embed; a `VideoError` when none.
    `sampled` gives the times found before by the same rule, for a video unchanged since (not decoded again)."""
    try:
        st = os.stat(video)
    except OSError as err:
        raise VideoError(f"cannot be read: {os_error_reason(err)}") from None
    times = sampled(video, st.st_size, st.st_mtime_ns) if sampled is not None else None
    return [
        VideoFrame(
            frame_address(video, t), st.st_size, st.st_mtime_ns, st.st_ctime_ns, video=video, seconds=t
        )
        for t in (frame_times(video, sampling) if times is None else times)
    ]


def expand_videos(scan: ImageScan, sampling: Sampling | None, sampled: Sampled | None = None) -> ImageScan:
    """`scan` with each video file (by extension) replaced by its frames (`video_frames`); a video that cannot
    be used moves to `skipped` with the reason. Without `sampling` (video input off), the scan as it is."""
    if sampling is None:
        return scan
    files: list[Any] = []
    skipped = list(scan.skipped)
    for file in scan.files:
        name = file if isinstance(file, str) else file.path
        if not isinstance(file, str) or not is_video_file(name):
            files.append(file)
            continue
        try:
            files += video_frames(name, sampling, sampled)
        except VideoError as err:
            skipped.append((name, str(err)))
    return ImageScan(files, skipped)


def sampling_of(every: float | None, scenes: float | None, videos: bool) -> Sampling | None:
    """The sampling the command-line options ask for (`--videos`, `--video-every`, `--video-scenes`), None
    when they leave video input off."""
    if every is None and scenes is None and not videos:
        return None
    return Sampling(every=DEFAULT_EVERY_S if every is None else every, scenes=scenes)
