"""Video as input: frames sampled at the right times, indexed and searched by address `<video>#t=<seconds>`,
served as thumbnails and links to the moment; broken videos skipped with the reason, never half-written."""

from __future__ import annotations

import io
import json
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from siglip import SearchIndex
from siglip.tools.cli import main
from siglip.tools.inputs import video as video_module
from siglip.tools.inputs.media import frame_address
from siglip.tools.inputs.video import Sampling, frame_times, read_frame
from siglip.tools.search.page import results_html
from siglip.tools.search.thumbnails import thumbnail_jpeg

av = pytest.importorskip("av")
pytest_plugins = ["_fixtures"]

SIZE = (96, 64)  # width, height of the test videos
FPS = 10


def _photo(name: str) -> np.ndarray:
    return np.asarray(Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize(SIZE))


def write_video(path: Path, photos: list[str], seconds_each: float = 1.0, **options: str) -> None:
    """A video of each photo in turn for `seconds_each` (photo i from i * seconds_each), H.264 at FPS."""
    with av.open(str(path), "w", options=options) as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = *SIZE, "yuv420p"
        stream.options = {"crf": "10"}
        for n, name in enumerate(p for p in photos for _ in range(round(FPS * seconds_each))):
            frame = av.VideoFrame.from_ndarray(_photo(name), format="rgb24")
            frame.pts = n
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    """The same picture, give or take H.264's loss."""
    return np.abs(a.astype(int) - b.astype(int)).mean() < 12


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    write_video(path, ["astronaut", "coffee", "rocket"])  # cuts at 1.0 s and 2.0 s
    return path


def test_frames_are_sampled_at_the_expected_times(video):
    assert frame_times(str(video), Sampling(every=0.5)) == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert frame_times(str(video), Sampling(every=2)) == [0.0, 2.0]
    assert frame_times(str(video), Sampling(scenes=0.1)) == [0.0, 1.0, 2.0]  # the cuts, and nothing else

    shown = {0.0: "astronaut", 0.95: "astronaut", 1.0: "coffee", 1.5: "coffee", 2.0: "rocket", 2.9: "rocket"}
    forward = {t: np.asarray(read_frame(str(video), t)) for t in shown}  # in order: decoded forward
    backward = {t: np.asarray(read_frame(str(video), t)) for t in reversed(shown)}  # each one sought
    for t, name in shown.items():
        assert _close(forward[t], _photo(name)), t
        np.testing.assert_array_equal(forward[t], backward[t])


def test_frames_decode_in_forked_workers(embedder, video):
    """DataLoader workers fork this process while it holds a video open (its FFmpeg threads stay behind):
    they must open their own, not wait forever on the copy."""
    frames = video_module.video_frames(str(video), Sampling(every=0.5))
    read_frame(str(video), 0.0)  # this process now has the video open
    in_process = np.concatenate(
        [b.vectors for b in embedder.embed_files(frames, 3, workers=0, progress=False)]
    )
    result: list[np.ndarray] = []
    worker = threading.Thread(
        target=lambda: result.extend(
            b.vectors for b in embedder.embed_files(frames, 3, workers=2, progress=False)
        )
    )
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "the decoding workers hung"
    np.testing.assert_allclose(np.concatenate(result), in_process, atol=1e-6)


def test_index_and_search_find_the_moment(checkpoint, embedder, video, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "library"
    folder.mkdir()
    clip = folder / "clip.mp4"
    clip.write_bytes(video.read_bytes())
    Image.fromarray(_photo("chelsea")).save(folder / "cat.png")
    index = tmp_path / "index"
    common = ["--index", str(index), "--workers", "0", "--no-progress"]
    assert main(["index", str(folder), *common, "--model", checkpoint, "--video-every", "1s"]) == 0
    capsys.readouterr()

    query = tmp_path / "query.png"
    Image.fromarray(_photo("coffee")).save(query)
    assert main(["search", "--image", str(query), "--index", str(index), "--json", "-k", "4"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert results[0]["path"] == frame_address(str(clip), 1.0)  # the moment the query shows
    assert {r["path"] for r in results} == {str(folder / "cat.png")} | {
        frame_address(str(clip), t) for t in (0, 1, 2)
    }

    # unchanged, the index's rule (recorded: no option needed): the times are reused, the video not decoded
    with monkeypatch.context() as patched:
        patched.setattr(video_module, "frame_times", lambda *_: pytest.fail("the video was sampled again"))
        assert main(["index", str(folder), *common]) == 0
    assert "0 added, 0 updated, 0 removed, 4 unchanged" in capsys.readouterr().out

    # the server: a frame's thumbnail is the frame, its link the video at the moment
    from fastapi.testclient import TestClient

    from siglip.tools.serve import create_app

    with TestClient(create_app(embedder, index)) as client:
        found = {
            h["name"]: h for h in client.post("/v1/search", json={"text": "coffee", "k": 4}).json()["results"]
        }
        frame = found["clip.mp4#t=1.000"]
        assert (
            frame["time"] == 1.0
            and frame["image_url"].endswith("#t=1.000")
            and found["cat.png"]["time"] is None
        )
        thumbnail = client.get(frame["thumbnail_url"])
        assert _close(np.asarray(Image.open(io.BytesIO(thumbnail.content)).resize(SIZE)), _photo("coffee"))
        whole = client.get(frame["image_url"].split("#")[0])
        assert whole.headers["content-type"] == "video/mp4" and whole.content == clip.read_bytes()

    # the video changes: sampled again, the frame no longer picked removed; deleted: its frames go
    write_video(clip, ["rocket", "astronaut"])
    assert main(["index", str(folder), *common, "--video-every", "1s"]) == 0
    assert "0 added, 2 updated, 1 removed, 1 unchanged" in capsys.readouterr().out
    with SearchIndex(index) as searched:
        top = searched.search_image(Image.fromarray(_photo("rocket")), k=1)[0]
        assert top.path == frame_address(str(clip), 0.0) and top.score > 0.95
        assert "#t=0.000" in results_html("rocket", [top])
    clip.unlink()
    assert main(["index", str(folder), *common, "--video-every", "1s"]) == 0
    assert "0 added, 0 updated, 2 removed, 1 unchanged" in capsys.readouterr().out


def test_a_phone_video_held_upright_gives_upright_frames(tmp_path):
    path = tmp_path / "portrait.mp4"
    landscape = np.zeros((SIZE[1], SIZE[0], 3), np.uint8)
    landscape[:, : SIZE[0] // 2] = 255  # the sensor's left half white: the bottom once turned 90 degrees left
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = *SIZE, "yuv420p"
        stream.set_display_rotation(90)  # counterclockwise, as a phone records it
        for n in range(3):
            frame = av.VideoFrame.from_ndarray(landscape, format="rgb24")
            frame.pts = n
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    shown = np.asarray(read_frame(str(path), 0.0))
    assert shown.shape == (SIZE[0], SIZE[1], 3)  # portrait
    assert _close(shown, np.rot90(landscape))  # numpy's rot90: counterclockwise


def test_a_thumbnail_of_a_frame_is_that_frame(video):
    jpeg = thumbnail_jpeg(frame_address(str(video), 2.0), size=48)
    thumbnail = np.asarray(Image.open(io.BytesIO(jpeg)))
    assert thumbnail.shape == (32, 48, 3)
    expected = np.asarray(Image.fromarray(_photo("rocket")).resize((48, 32)))
    assert _close(thumbnail, expected)
    assert thumbnail_jpeg(frame_address(str(video), 30.0)) is None  # past its end


def test_broken_videos_are_skipped_with_the_reason(checkpoint, video, tmp_path, capsys):
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "good.mp4").write_bytes(video.read_bytes())
    (folder / "truncated.mp4").write_bytes(
        video.read_bytes()[: video.stat().st_size // 2]
    )  # index at the end
    write_video(tmp_path / "streamable.mp4", ["astronaut", "coffee", "rocket"], movflags="faststart")
    streamable = (tmp_path / "streamable.mp4").read_bytes()  # its index first: it plays until the cut
    (folder / "cut.mp4").write_bytes(streamable[: len(streamable) * 6 // 10])
    write_video(tmp_path / "whole.mkv", ["astronaut"])
    (folder / "cut.mkv").write_bytes((tmp_path / "whole.mkv").read_bytes()[:600])  # no whole frame left
    (folder / "text.mp4").write_text("not a video\n")
    with av.open(str(folder / "empty.mp4"), "w") as out:  # a video stream without a frame
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = *SIZE, "yuv420p"
        out.start_encoding()
    out_file = tmp_path / "out.npy"
    args = ["--model", checkpoint, "--workers", "0", "--no-progress", "--videos"]

    assert main(["embed", str(folder), "--out", str(out_file), *args]) == 0
    err = capsys.readouterr().err
    assert "skipped 5 unreadable file(s)" in err
    assert f"{folder / 'cut.mkv'}: has no frames" in err
    assert f"{folder / 'empty.mp4'}: has no video stream" in err
    for name in ("truncated.mp4", "text.mp4"):
        assert f"{folder / name}: is not a video file FFmpeg can read (truncated or corrupt?)" in err
    cut = frame_address(str(folder / "cut.mp4"), 2.0)
    assert f"{cut}: has no frame at 2.000 s: it ends at " in err
    manifest = json.loads(Path(f"{out_file}.json").read_text())
    good = [frame_address(str(folder / "good.mp4"), t) for t in (0, 2)]
    assert manifest["paths"] == [frame_address(str(folder / "cut.mp4"), 0), *good]
    assert len(np.load(out_file)) == 3

    # frames embedded apart and imported into an index are current there: an update embeds nothing again
    good_video = str(folder / "good.mp4")
    parquet, index = tmp_path / "good.parquet", str(tmp_path / "index")
    assert main(["embed", good_video, "--out", str(parquet), *args]) == 0
    assert main(["index", "--from-embeddings", str(parquet), "--index", index]) == 0
    assert main(["index", good_video, "--index", index, *args[2:]]) == 0
    assert "0 added, 0 updated, 0 removed, 2 unchanged" in capsys.readouterr().out

    # nothing usable: one line naming a video, and no output
    for name in ("good.mp4", "cut.mp4"):
        (folder / name).unlink()
    assert main(["embed", str(folder), "--out", str(tmp_path / "none.npy"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        "\n" not in err
        and f"none of the images given can be used: 4 left out, e.g. '{folder / 'cut.mkv'}'" in err
    )
    assert not list(tmp_path.glob("none.npy*"))


def test_without_the_extra_a_video_names_it(checkpoint, video, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # as if PyAV were not installed
    out = tmp_path / "out.npy"
    assert (
        main(["embed", str(video), "--out", str(out), "--model", checkpoint, "--videos", "--no-progress"])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.endswith(
        "reading video files needs the 'av' package: pip install 'siglip[video]'"
    )
    assert not list(tmp_path.iterdir())
