"""``lineinspect publish``: stream one camera source onto the bus."""

from __future__ import annotations

import argparse
import logging
import signal
import time

from lineinspect.errors import ConfigError
from lineinspect.logs import kv
from lineinspect.settings import Settings

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("publish", help="publish a camera source (sim://, folder://, video, rtsp://, usb:N) to Kafka",
                       description="Encode frames from a source and publish them keyed by camera. "
                                   "Sources: sim://PRODUCT?defect_rate=0.1&seed=0&size=256[&resolution=5mp|12mp|20mp|HxW][&mono=1], "
                                   "folder:///dir?loop=1, "
                                   "a video file, rtsp://..., http://..., usb:0.")
    p.add_argument("--source", required=True, help="source URI (see above)")
    p.add_argument("--product", required=True)
    p.add_argument("--line", required=True)
    p.add_argument("--camera", required=True)
    p.add_argument("--bus", default=None, help="kafka://host:port (env LINEINSPECT_BUS_URL)")
    p.add_argument("--topic", default=None, help="frames topic (env LINEINSPECT_TOPIC_FRAMES)")
    p.add_argument("--fps", type=float, default=0.0, help="target frames per second (0 = as fast as possible)")
    p.add_argument("--count", type=int, default=None, help="stop after N frames (default: until the source ends)")
    p.add_argument("--loop", action="store_true", help="restart folder / video sources at their end")
    p.add_argument("--encoding", choices=("jpeg", "png"), default="jpeg")
    p.add_argument("--quality", type=int, default=92, help="JPEG quality")
    p.add_argument("--first-frame-id", type=int, default=None,
                   help="first frame id (default: milliseconds since the epoch, restart-safe below 1000 frames/s)")
    p.set_defaults(func=run_publish)


def run_publish(args: argparse.Namespace, settings: Settings) -> int:
    from ingest.bus import open_publisher
    from ingest.publisher import FramePublisher, check_options
    from ingest.sources import Pacer, open_source

    if args.count is not None and args.count <= 0:
        raise ConfigError(f"--count must be > 0 (got {args.count})")
    try:  # the publisher's and the pacer's own checks, before the source and the bus are opened
        check_options(args.encoding, args.quality, args.first_frame_id)
        pacer = Pacer(args.fps)
    except ValueError as exc:  # each message starts with the option's name
        raise ConfigError(f"--{exc}") from None
    settings = settings.with_overrides(bus_url=args.bus, topic_frames=args.topic)
    source = open_source(args.source, loop=args.loop, count=args.count)
    pub = FramePublisher(settings, args.product, args.line, args.camera, open_publisher(settings),
                         first_frame_id=args.first_frame_id, encoding=args.encoding, quality=args.quality)
    stop = {"flag": False}

    def _stop(signum: int, _frame: object) -> None:
        stop["flag"] = True

    old = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGINT)}
    t0 = time.monotonic()
    first = pub.next_frame_id
    try:
        for image in source:
            if stop["flag"] or (args.count is not None and pub.published >= args.count):
                break
            pacer.wait()
            pub.publish(image)
            if pub.published % 100 == 0:
                log.info("publishing", extra=kv(camera=args.camera, published=pub.published))
    finally:
        source.close()
        pub.close()
        for s, h in old.items():
            signal.signal(s, h)
    dt = time.monotonic() - t0
    log.info("published", extra=kv(camera=args.camera, frames=pub.published, first_frame_id=first,
                                    last_frame_id=pub.next_frame_id - 1, seconds=round(dt, 2)))
    held = pub.published / max(dt, 1e-9)
    fmt = f"JPEG quality {args.quality}" if args.encoding == "jpeg" else "PNG"
    target = f"target {args.fps:g} frames/s, " if args.fps > 0 else "unpaced, "
    print(f"published {pub.published} frames from {args.source} as camera {args.camera} "
          f"(frame ids {first}..{pub.next_frame_id - 1}; {fmt}; {target}held {held:.1f} frames/s)")
    if args.fps > 0 and held < 0.95 * args.fps:
        print(f"warning: the publisher held {held:.1f} of the {args.fps:g} frames/s asked for "
              f"(rendering/encoding or the broker is the limit)")
    return 0
