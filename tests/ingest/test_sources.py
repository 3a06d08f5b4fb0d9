"""Camera sources and pacing."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from ingest.sources import (
    FolderSource,
    Pacer,
    SourceError,
    VideoSource,
    open_source,
    parse_size,
)


def _write_images(folder: Path, n: int) -> list[np.ndarray]:
    imgs = []
    for i in range(n):
        img = np.full((20, 30, 3), (i * 40, 10, 200), np.uint8)
        cv2.imwrite(str(folder / f"img_{i:02d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        imgs.append(img)
    return imgs


def test_folder_source_sorted_rgb_and_loop(tmp_path: Path) -> None:
    imgs = _write_images(tmp_path, 3)
    (tmp_path / "notes.txt").write_text("not an image")
    got = list(open_source(f"folder://{tmp_path}"))
    assert len(got) == 3 and all(np.array_equal(a, b) for a, b in zip(got, imgs))
    looping = iter(open_source(f"folder://{tmp_path}?loop=1"))
    assert np.array_equal([next(looping) for _ in range(5)][4], imgs[1])
    assert isinstance(open_source(str(tmp_path)), FolderSource)


def test_sim_source_matches_the_simulator() -> None:
    from ingest.simulator import LineSimulator

    src = open_source("sim://widget?defect_rate=0.5&seed=3&size=64", count=4)
    frames = list(src)
    assert len(frames) == 4 and frames[0].shape == (64, 64, 3) and frames[0].dtype == np.uint8
    ref = LineSimulator("widget", size=(64, 64), defect_rate=0.5, seed=3).frame(2)
    assert np.array_equal(frames[2], ref.image) and src.truth[2] == ref.defect


def test_video_file_source(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
    if not w.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG video")
    for i in range(5):
        w.write(np.full((24, 32, 3), i * 50, np.uint8))
    w.release()
    src = open_source(str(path))
    assert isinstance(src, VideoSource)
    frames = list(src)
    src.close()
    assert len(frames) == 5 and frames[0].shape == (24, 32, 3)


@pytest.mark.parametrize("spec", ["", "sim://", "nope://x", "/does/not/exist", "usb:abc", "sim://w?defect_rate=2"])
def test_bad_sources_fail_clearly(spec: str) -> None:
    with pytest.raises(SourceError):
        open_source(spec)


def test_single_image_is_refused(tmp_path: Path) -> None:
    _write_images(tmp_path, 1)
    with pytest.raises(SourceError, match="single image"):
        open_source(str(tmp_path / "img_00.png"))


def test_parse_size() -> None:
    assert parse_size("64") == (64, 64) and parse_size("48x80") == (48, 80)
    with pytest.raises(SourceError):
        parse_size("8")


def test_pacer_schedules_without_bursting() -> None:
    now = [0.0]
    slept = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    p = Pacer(10, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        p.wait()
    assert slept == pytest.approx([0.1, 0.1])
    now[0] += 5.0  # a long stall: the next frame goes now, no catch-up burst
    p.wait()
    p.wait()
    assert slept[-1] == pytest.approx(0.1)
    Pacer(0).wait()  # no pacing
    with pytest.raises(ValueError):
        Pacer(-1)


def test_sim_source_camera_resolution_and_mono() -> None:
    from ingest.sources import CAMERA_RESOLUTIONS, parse_resolution

    src = open_source("sim://widget?size=128&resolution=5mp&mono=1&seed=3", count=2)
    frames = list(src)
    assert [f.shape for f in frames] == [CAMERA_RESOLUTIONS["5mp"]] * 2 and frames[0].dtype == np.uint8
    colour = next(iter(open_source("sim://widget?size=64&resolution=96x160", count=1)))
    assert colour.shape == (96, 160, 3)
    assert parse_resolution("12MP") == (3000, 4096) and parse_resolution("300x400") == (300, 400)
    with pytest.raises(SourceError):
        open_source("sim://widget?resolution=lots")


def test_an_unreadable_image_in_a_folder_is_skipped_not_the_end_of_the_stream(tmp_path: Path,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    imgs = _write_images(tmp_path, 2)
    (tmp_path / "img_00b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # sorts between the two good ones
    src = FolderSource(tmp_path)
    with caplog.at_level("WARNING", logger="ingest.sources"):
        got = list(src)
    assert len(got) == 2 and np.array_equal(got[1], imgs[1])
    assert src.skipped == 1 and "unreadable image skipped" in caplog.text


def test_a_folder_with_no_readable_image_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(SourceError, match="none of the 1 images"):
        list(FolderSource(tmp_path))


def test_a_missing_source_is_one_clear_line_and_exit_status_2(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from lineinspect import cli

    missing = tmp_path / "no_such_folder"
    rc = cli.main(["publish", "--source", f"folder://{missing}", "--product", "p", "--line", "l",
                   "--camera", "c", "--bus", "memory://"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.strip() == f"lineinspect: error: image folder {missing} does not exist"
