"""Video frames/s: sampling (listing and decoding the frames) and embedding them with the bundled model.

    python benchmarks/bench_video.py [--seconds 60] [--size 1280x720] [--fps 30] [--gop 60] [--workers 0 2]
        [--video KEEP.mp4]

A `--seconds` H.264 video (`--size`, `--fps`, a keyframe every `--gop` frames: phones write one every 1-2 s)
is encoded from scikit-image's photos, one photo per 3 s with a slow zoom, so that every frame differs. Each
row times one rule from the video's path to the embeddings in memory (`video_frames` + `Embedder.embed_files`,
what `siglip embed --videos` runs), and, apart, the decoding alone (`read_frame` over the same frames); it
prints frames/s of the whole job and of decoding, and the machine line (CPU flags, load).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from PIL import Image

import siglip
from _common import PHOTOS, machine_line
from siglip.tools.inputs.video import Sampling, read_frame, video_frames


def write_video(path: Path, seconds: int, size: tuple[int, int], fps: int, gop: int) -> None:
    from skimage import data

    photos = [Image.fromarray(getattr(data, name)()).convert("RGB") for name in PHOTOS]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
        stream.options = {"g": str(gop), "preset": "veryfast"}
        for n in range(seconds * fps):
            photo = photos[n // (3 * fps) % len(photos)]
            zoom = 1 - 0.2 * (n % (3 * fps)) / (3 * fps)
            w, h = int(photo.width * zoom), int(photo.height * zoom)
            crop = photo.crop(
                (
                    (photo.width - w) // 2,
                    (photo.height - h) // 2,
                    (photo.width + w) // 2,
                    (photo.height + h) // 2,
                )
            )
            frame = av.VideoFrame.from_image(crop.resize(size))
            frame.pts = n
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--gop", type=int, default=60)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--video", type=Path, help="keep the encoded video here, and reuse it when it exists")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))

    embedder = siglip.Embedder.from_pretrained("siglip-tiny-fashion", device="cpu")
    embedder.embed_images([Image.new("RGB", size)] * 32)  # warm up: the first batch of a shape costs more
    with tempfile.TemporaryDirectory() as tmp:
        video = args.video or Path(tmp) / "clip.mp4"
        start = time.perf_counter()
        if not video.exists():
            write_video(video, args.seconds, size, args.fps, args.gop)
        print(
            f"video: {args.seconds} s, {args.size}, {args.fps} fps, keyframe every {args.gop} frames, "
            f"{video.stat().st_size / 1e6:.1f} MB (encoded in {time.perf_counter() - start:.1f} s)"
        )
        print(
            f"model: {embedder.name} ({embedder.settings.get('precision')}), torch threads {os.cpu_count()}"
        )
        print(f"{'rule':<18}{'workers':>8}{'frames':>8}{'job frames/s':>14}{'decode frames/s':>17}")
        for label, sampling in [
            ("every 2 s", Sampling(every=2)),
            ("every 0.5 s", Sampling(every=0.5)),
            ("every 0.1 s", Sampling(every=0.1)),
            ("scenes 0.1", Sampling(scenes=0.1)),
        ]:
            for workers in args.workers:
                start = time.perf_counter()
                frames = video_frames(str(video), sampling)
                vectors = [
                    b.vectors
                    for b in embedder.embed_files(frames, batch_size=32, workers=workers, progress=False)
                ]
                job = time.perf_counter() - start
                assert sum(len(v) for v in vectors) == len(frames)
                start = time.perf_counter()
                for frame in frames:
                    np.asarray(read_frame(frame.video, frame.seconds))
                decode = time.perf_counter() - start
                print(
                    f"{label:<18}{workers:>8}{len(frames):>8}{len(frames) / job:>14.1f}{len(frames) / decode:>17.1f}"
                )
    print(machine_line())


if __name__ == "__main__":
    main()
