#!/usr/bin/env python3
"""Live webcam demo: ground "the red cup" (or your queries) and show the overlay window.

    python3 examples/webcam_demo.py                         # camera 0, embedded demo model
    python3 examples/webcam_demo.py --source csi://0 --query "a coffee mug" --query "a phone"
    python3 examples/webcam_demo.py --source synthetic://tabletop    # no camera needed

The same as the CLI:  vlmedge run --source 0 --display --query "the red cup"

While it runs, targets are published on tcp://127.0.0.1:5555 and the control socket listens on
tcp://127.0.0.1:5556 (--publish / --control: other addresses, e.g. next to a running `vlmedge`, or none);
try in another terminal:
    vlmedge subscribe                       # one line per target
    vlmedge send set_queries "a bottle"     # change what it looks for
Press q or Esc in the window (or Ctrl-C) to stop.
"""

from __future__ import annotations

import argparse
import logging
import sys

from vlmedge.errors import SourceError, VlmEdgeError


def main(argv: list[str] | None = None) -> int:
    from vlmedge.protocol import DEFAULT_CONTROL_ADDRESS, DEFAULT_PUB_ADDRESS

    ap = argparse.ArgumentParser(description="vlmedge live webcam demo: ground queries in a camera and show them")
    ap.add_argument("--source", default="0", help="camera index, /dev/videoN, csi://0, rtsp://..., a file (default 0)")
    ap.add_argument("--query", action="append", dest="queries", help="what to look for (repeatable)")
    ap.add_argument("--bundle", default=None, help="bundle directory (default: the embedded demo bundle)")
    ap.add_argument("--display", action=argparse.BooleanOptionalAction, default=True,
                    help="show the window (--no-display prints targets instead)")
    ap.add_argument("--publish", default=DEFAULT_PUB_ADDRESS, metavar="ADDR",
                    help=f"ZeroMQ address for the targets, 'none' to disable (default: {DEFAULT_PUB_ADDRESS}; "
                         "another one next to a running vlmedge)")
    ap.add_argument("--control", default=DEFAULT_CONTROL_ADDRESS, metavar="ADDR",
                    help=f"ZeroMQ address for control requests, 'none' to disable (default: {DEFAULT_CONTROL_ADDRESS})")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from vlmedge.runtime.app import RunConfig, run

    try:
        summary = run(RunConfig(source=args.source, bundle=args.bundle, queries=tuple(args.queries or ("the red cup",)),
                                display=args.display, publish=args.publish, control=args.control))
    except VlmEdgeError as e:
        print(f"webcam_demo: {e}", file=sys.stderr)
        if isinstance(e, SourceError) and args.source == "0":
            print("webcam_demo: no webcam? try --source synthetic://tabletop", file=sys.stderr)
        return 1
    print(f"{summary.frames} frames at {summary.fps:.1f} FPS, stopped by {summary.stop_reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
