"""Summarise a py-spy profile (``--format raw``: collapsed stacks) as text: the functions with the
most samples, inclusive and self. ``python -m bench.profile FILE.txt [--top 40] [--filter TEXT]``

The bench writes such files with ``python -m bench <scenario> --profile`` (py-spy must be installed:
``pip install py-spy``), one per projmig run, into ``bench/results/profiles/``.
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

_LINE = re.compile(r" \(([^()]*):\d+\)")


def _frames(stack: str) -> list[str]:
    # "fn (path/file.py:123)" -> "fn (file.py)": lines of one function add up
    return [_LINE.sub(lambda m: f" ({m.group(1).rsplit('/', 1)[-1]})", f) for f in stack.split(";")]


def summarize(path: Path, top: int = 40, contains: str | None = None) -> str:
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = _frames(stack)
        if contains and not any(contains in f for f in frames):
            continue
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    out = [f"{path.name}: {total} samples" + (f" (stacks with {contains!r})" if contains else "")]
    for title, counter in (("inclusive", inclusive), ("self", own)):
        out.append(f"-- top {top} {title}")
        for frame, n in counter.most_common(top):
            out.append(f"{100 * n / max(1, total):6.1f}%  {frame[:150]}")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--filter", default=None, help="only stacks with a frame containing this text")
    args = parser.parse_args()
    for file in args.files:
        print(summarize(file, args.top, args.filter))


if __name__ == "__main__":
    main()
