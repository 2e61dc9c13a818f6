#!/usr/bin/env python3
"""Summarise a py-spy ``--format raw`` profile (collapsed stacks): the functions with the most
samples, by self time and by total (inclusive) time, as percentages of all samples.

    bench/.venv/bin/python bench/run.py --scenario idle --supervisors supervise --profile /tmp/prof
    python3 bench/pyspy_top.py /tmp/prof/idle-supervise-200.txt [--top 15] [--match supervisor/]

A py-spy sample is one thread's stack at one instant; with ``--rate 500`` a fully busy thread
gives 500 samples a second, so ``samples / rate`` is CPU seconds (py-spy leaves idle threads
out unless run with ``--idle``).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter


def load(path: str) -> list[tuple[list[str], int]]:
    stacks = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                continue
            stack, _, count = line.rpartition(" ")
            try:
                stacks.append((stack.split(";"), int(count)))
            except ValueError:
                continue
    return stacks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--match", default="", help="only functions whose frame text contains this")
    parser.add_argument("--rate", type=float, default=500.0, help="py-spy's --rate, to print seconds")
    args = parser.parse_args(argv)
    stacks = load(args.profile)
    total = sum(c for _, c in stacks) or 1
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks:
        if frames:
            own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    print(f"{args.profile}: {total} samples ({total / args.rate:.2f} s at {args.rate:g} Hz)")
    for title, counter in (("total (inclusive)", inclusive), ("self", own)):
        print(f"\n{title}:")
        shown = 0
        for frame, count in counter.most_common():
            if args.match and args.match not in frame:
                continue
            print(f"  {100 * count / total:5.1f}%  {count / args.rate:7.2f} s  {frame}")
            shown += 1
            if shown >= args.top:
                break
    return 0


if __name__ == "__main__":
    sys.exit(main())
