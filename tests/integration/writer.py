"""A job for the output tests: writes numbered lines to stdout, one write() each, optionally pausing between them
(so each tends to become a journal entry of its own) and padding them to a size; with --hold-at N --until PATH it
waits before line N until PATH exists (a test keeps it running for as long as it needs, whatever the machine's
speed)."""

import argparse
import os
import time

parser = argparse.ArgumentParser()
parser.add_argument("--lines", type=int, required=True)
parser.add_argument("--pause", type=float, default=0.0003)
parser.add_argument("--size", type=int, default=0, help="append a space and this many dots to each line")
parser.add_argument("--hold-at", type=int, default=-1, help="before this line, wait for --until to exist")
parser.add_argument("--until", default="")
args = parser.parse_args()
pad = b" " + b"." * args.size if args.size else b""
for i in range(args.lines):
    while i == args.hold_at and not os.path.exists(args.until):
        time.sleep(0.1)
    os.write(1, b"line %d%s\n" % (i, pad))
    if args.pause:
        time.sleep(args.pause)
