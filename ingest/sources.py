"""Camera sources: anything that yields RGB uint8 frames, named by one string.

  * ``sim://widget?defect_rate=0.1&seed=0&size=256x256`` — the synthetic line (:mod:`ingest.simulator`);
    ``&resolution=5mp|12mp|20mp|HxW`` upscales each rendered frame to a line camera's sensor size
    (bicubic; the scene is rendered at ``size``), ``&mono=1`` makes it a one-channel camera
  * ``folder:///path/to/images?loop=1`` or a folder path — images in sorted order (optionally looping)
  * ``/path/video.mp4`` or ``file:///path/video.mp4`` — a video file (OpenCV)
  * ``rtsp://...``, ``http(s)://...`` — a network stream (OpenCV / FFmpeg)
  * ``usb:0`` — a local camera by device index

Every source is an iterator of frames and has ``close()``; :class:`Pacer` holds a target rate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np

from lineinspect.errors import ConfigError
from lineinspect.logs import kv

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class SourceError(ConfigError):
    """A source that cannot be opened or read; says which and why (a ConfigError: the CLI prints it as one line
    and exits 2, since the fix is in the source URI or the files it names)."""


class Pacer:
    """Sleeps so that successive :meth:`wait` calls happen at ``fps`` per second (0 = no pacing).

    Falls behind gracefully: after a stall it does not burst to catch up.
    """

    def __init__(self, fps: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if fps < 0:
            raise ValueError(f"fps must be >= 0, 0 = as fast as possible (got {fps:g})")
        self.period = 1.0 / fps if fps > 0 else 0.0
        self._clock = clock
        self._sleep = sleep
        self._next: float | None = None

    def wait(self) -> None:
        if not self.period:
            return
        now = self._clock()
        if self._next is None or now - self._next > self.period:
            self._next = now  # first call, or more than one frame late: restart the schedule
        elif self._next > now:
            self._sleep(self._next - now)
        self._next += self.period


class FrameSource:
    """Base: iterate to get RGB uint8 (H, W, 3) frames; ``close()`` releases the device."""

    name: str = "source"

    def __iter__(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        return None

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _to_rgb(img: np.ndarray) -> np.ndarray:
    import cv2

    if img.dtype != np.uint8:
        img = cv2.convertScaleAbs(img, alpha=255.0 / max(1.0, float(img.max())))
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


# Common line-camera sensors, (H, W): 5 MP (e.g. Sony IMX264), 12 MP (IMX253), 20 MP (IMX183).
CAMERA_RESOLUTIONS = {"5mp": (2048, 2448), "12mp": (3000, 4096), "20mp": (3648, 5472)}


def parse_resolution(text: str) -> tuple[int, int]:
    """``5mp``/``12mp``/``20mp`` or ``HxW`` -> (H, W)."""
    named = CAMERA_RESOLUTIONS.get(text.lower())
    return named if named is not None else parse_size(text)


class SimSource(FrameSource):
    """The synthetic production line; ``truth[i]`` holds frame i's injected defect (or None).

    ``resolution`` upscales every rendered frame to a camera sensor size (bicubic): rendering the
    scene itself at 5-20 MP would cost seconds per frame, and the pipeline under test only needs
    frames of the camera's size and byte weight. ``mono`` yields (H, W) one-channel frames."""

    def __init__(self, product: str, size: tuple[int, int] = (256, 256), defect_rate: float = 0.1, seed: int = 0,
                 count: int | None = None, start: int = 0, resolution: tuple[int, int] | None = None,
                 mono: bool = False) -> None:
        from ingest.simulator import LineSimulator

        self.name = f"sim://{product}"
        self.sim = LineSimulator(product=product, size=size, defect_rate=defect_rate, seed=seed)
        self.count = count
        self.start = start
        self.resolution = resolution
        self.mono = mono
        self.truth: dict[int, str | None] = {}

    def __iter__(self) -> Iterator[np.ndarray]:
        import cv2

        stop = None if self.count is None else self.start + self.count
        for f in self.sim.frames(self.start, stop):
            self.truth[f.index] = f.defect
            img = f.image
            if self.resolution is not None and img.shape[:2] != self.resolution:
                img = cv2.resize(img, (self.resolution[1], self.resolution[0]), interpolation=cv2.INTER_CUBIC)
            yield cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if self.mono else img


class FolderSource(FrameSource):
    """Images in a folder (recursively), in sorted path order; ``loop`` restarts at the end."""

    def __init__(self, folder: str | Path, loop: bool = False) -> None:
        self.folder = Path(folder)
        self.name = f"folder://{self.folder}"
        if not self.folder.is_dir():
            raise SourceError(f"image folder {self.folder} does not exist")
        self.paths = sorted(p for p in self.folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.paths:
            raise SourceError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {self.folder}")
        self.loop = loop
        self.skipped = 0  # unreadable files passed over so far

    def __iter__(self) -> Iterator[np.ndarray]:
        """Every readable image in turn. One unreadable file (truncated, not really an image) is skipped with a
        warning rather than ending the stream; a pass that reads nothing at all is an error."""
        import cv2

        while True:
            read = 0
            for p in self.paths:
                img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
                if img is None:
                    self.skipped += 1
                    log.warning("unreadable image skipped", extra=kv(source=self.name, path=str(p)))
                    continue
                read += 1
                yield _to_rgb(img)
            if not read:
                raise SourceError(f"none of the {len(self.paths)} images under {self.folder} can be read")
            if not self.loop:
                return


class VideoSource(FrameSource):
    """A video file, network stream (RTSP/HTTP) or USB camera through ``cv2.VideoCapture``."""

    def __init__(self, target: str | int, loop: bool = False) -> None:
        import cv2

        self.target = target
        self.name = f"usb:{target}" if isinstance(target, int) else str(target)
        self.loop = loop and isinstance(target, str) and Path(target).is_file()
        self._cap = cv2.VideoCapture(target)
        if not self._cap.isOpened():
            self._cap.release()
            raise SourceError(f"OpenCV cannot open {self.name!r} (missing file, unreachable stream or no such device)")

    def __iter__(self) -> Iterator[np.ndarray]:
        import cv2

        while True:
            ok, frame = self._cap.read()
            if ok and frame is not None:
                yield _to_rgb(frame)
                continue
            if self.loop:
                self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, frame = self._cap.read()
                if ok and frame is not None:
                    yield _to_rgb(frame)
                    continue
            return

    def close(self) -> None:
        self._cap.release()


def _flag(q: dict[str, list[str]], name: str, default: bool = False) -> bool:
    v = q.get(name, [None])[-1]
    return default if v is None else v.lower() in ("1", "true", "yes", "on")


def parse_size(text: str) -> tuple[int, int]:
    """``"256"`` -> (256, 256); ``"240x320"`` -> (240, 320) as (H, W)."""
    parts = text.lower().split("x")
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        raise SourceError(f"size {text!r} is not N or HxW") from None
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or min(vals) < 16:
        raise SourceError(f"size {text!r} must be N or HxW with sides >= 16")
    return vals[0], vals[1]


def open_source(spec: str, loop: bool = False, count: int | None = None) -> FrameSource:
    """Open the source ``spec`` names (see the module docstring); raises :class:`SourceError`."""
    if not spec:
        raise SourceError("empty source")
    u = urlparse(spec)
    q = parse_qs(u.query)
    if u.scheme == "sim":
        product = u.netloc or u.path.strip("/")
        if not product:
            raise SourceError("sim:// needs a product name, e.g. sim://widget")
        try:
            rate = float(q.get("defect_rate", ["0.1"])[-1])
            seed = int(q.get("seed", ["0"])[-1])
            start = int(q.get("start", ["0"])[-1])
        except ValueError as exc:
            raise SourceError(f"bad sim:// parameter in {spec!r}: {exc}") from None
        if not 0.0 <= rate <= 1.0:
            raise SourceError("defect_rate must be within [0, 1]")
        size = parse_size(q.get("size", ["256"])[-1])
        res = q.get("resolution", [None])[-1]
        return SimSource(product, size=size, defect_rate=rate, seed=seed, count=count, start=start,
                         resolution=parse_resolution(res) if res else None, mono=_flag(q, "mono"))
    if u.scheme == "folder":
        return FolderSource(unquote(u.netloc + u.path), loop=_flag(q, "loop", loop))
    if u.scheme == "usb":
        idx = (u.netloc or u.path).strip("/")
        if not idx.isdigit():
            raise SourceError(f"usb source must be usb:<device index>, got {spec!r}")
        return VideoSource(int(idx))
    if u.scheme in ("rtsp", "rtsps", "http", "https", "rtmp", "udp", "tcp"):
        return VideoSource(spec)
    if u.scheme == "file":
        spec = unquote(u.path)
    elif u.scheme and len(u.scheme) > 1:
        raise SourceError(f"unknown source scheme {u.scheme!r} in {spec!r} (sim, folder, file, rtsp, http, usb)")
    path = Path(spec)
    if path.is_dir():
        return FolderSource(path, loop=loop)
    if not path.exists():
        raise SourceError(f"source {spec!r} does not exist")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise SourceError(f"{spec!r} is a single image; give its folder (folder://...) to stream images")
    return VideoSource(str(path), loop=loop)
