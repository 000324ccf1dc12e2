"""A job for the output tests: writes numbered lines to stdout, one write() each, optionally pausing between them
(so each tends to become a journal entry of its own) and padding them to a size."""

import argparse
import os
import time

parser = argparse.ArgumentParser()
parser.add_argument("--lines", type=int, required=True)
parser.add_argument("--pause", type=float, default=0.0003)
parser.add_argument("--size", type=int, default=0, help="append a space and this many dots to each line")
args = parser.parse_args()
pad = b" " + b"." * args.size if args.size else b""
for i in range(args.lines):
    os.write(1, b"line %d%s\n" % (i, pad))
    if args.pause:
        time.sleep(args.pause)
