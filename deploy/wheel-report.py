#!/usr/bin/env python3
"""List every distribution in an environment with the wheel it was installed from, and fail
unless each one came from a published wheel for the expected CPU architecture.

check-arm64.sh runs this inside the arm64 chroot after the Raspberry Pi install: pip ran there
with PIP_ONLY_BINARY=:all:, so a dependency without an aarch64 wheel already failed loudly; this
is the independent proof read back from what was installed. pip writes each wheel's tags into
the distribution's `WHEEL` record, so the tags show what was installed whatever pip printed:
`manylinux`/`musllinux` platform tags come from an index (PyPI takes no other Linux tags), a
plain `linux_<arch>` tag means the wheel was compiled on this machine, and no `WHEEL` record at
all means a legacy `setup.py install`. A project installed from a local source tree (the
`direct_url.json` of PEP 610 says so) is accepted only where named with --local.

Standard library only, Python 3.10+: it runs in the venv it inspects.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata


@dataclass(frozen=True)
class Installed:
    """One distribution: its wheel as recorded, where it came from, and what is wrong with it."""

    name: str
    version: str
    wheel: str
    kind: str  # "pure", "binary", "local" (a source tree) or "other" (no wheel at all)
    problems: tuple[str, ...]


def normalise(name: str) -> str:
    """PEP 503's normalised project name, for comparing names across spellings."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_filename(name: str, version: str, tags: Sequence[str]) -> str:
    """The PEP 427 file name of a wheel with these tags, compressed tag sets joined with '.'
    in the order the record lists them (as pip and the index name the file)."""
    parts: list[list[str]] = [[], [], []]
    for tag in tags:
        for i, part in enumerate(tag.split("-", 2)):
            if part not in parts[i]:
                parts[i].append(part)
    compressed = "-".join(".".join(p) for p in parts)
    return f"{re.sub(r'[-_.]+', '_', name)}-{version}-{compressed}.whl"


def platform_problems(platforms: Iterable[str], arch: str) -> list[str]:
    """Why these platform tags are not a published wheel for `arch` (empty if they are)."""
    wrong = [p for p in platforms if p != "any" and not p.endswith(f"_{arch}")]
    built = [p for p in platforms if p == f"linux_{arch}"]
    odd = [
        p
        for p in platforms
        if p.endswith(f"_{arch}")
        and p not in built
        and not p.startswith(("manylinux", "musllinux"))
    ]
    problems = []
    if wrong:
        problems.append(f"not an {arch} wheel: {', '.join(wrong)}")
    if built:
        problems.append(f"{built[0]}: compiled on this machine (no index publishes linux_ tags)")
    if odd:
        problems.append(f"no manylinux/musllinux platform: {', '.join(odd)}")
    return problems


def _source_url(dist: metadata.Distribution) -> str | None:
    """The local folder a distribution was installed from (PEP 610 dir_info), or None."""
    text = dist.read_text("direct_url.json")
    if not text:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return "an unreadable direct_url.json"
    return record.get("url", "an unnamed source") if "dir_info" in record else None


def inspect(dist: metadata.Distribution, arch: str, local: set[str]) -> Installed:
    """What `dist` was installed from and every reason it fails the wheels-only rule."""
    name, version = dist.metadata["Name"], dist.version
    wheel = dist.read_text("WHEEL")
    if wheel is None:
        problem = "no WHEEL record: not installed from a wheel"
        return Installed(name, version, "-", "other", (problem,))
    tags = [line.split(":", 1)[1].strip() for line in wheel.splitlines() if line.startswith("Tag:")]
    if not tags:
        return Installed(name, version, "-", "other", ("its WHEEL record lists no Tag",))
    problems = platform_problems(dict.fromkeys(t.rsplit("-", 1)[-1] for t in tags), arch)
    url = _source_url(dist)
    if url is not None:
        kind = "local"
        if normalise(name) not in local:
            problems.append(f"installed from a local source tree ({url}), not from an index")
    else:
        kind = "pure" if all(t.endswith("-any") for t in tags) else "binary"
    return Installed(name, version, wheel_filename(name, version, tags), kind, tuple(problems))


def report(dists: Iterable[metadata.Distribution], arch: str, local: set[str]) -> list[Installed]:
    """Every distribution, sorted by normalised name."""
    return sorted((inspect(d, arch, local) for d in dists), key=lambda i: normalise(i.name))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", required=True, help="CPU architecture the wheels must be for")
    parser.add_argument(
        "--local",
        action="append",
        default=[],
        metavar="NAME",
        help="a project that may come from a local source tree (repeatable)",
    )
    parser.add_argument(
        "--path",
        action="append",
        default=None,
        metavar="DIR",
        help="site-packages folder to inspect (repeatable; default: this interpreter's)",
    )
    args = parser.parse_args(argv)
    dists = metadata.distributions(path=args.path) if args.path else metadata.distributions()
    rows = report(dists, args.arch, {normalise(n) for n in args.local})
    if not rows:
        print("no distributions found", file=sys.stderr)
        return 1
    width = max(len(r.name) for r in rows)
    for r in rows:
        print(f"{r.name:<{width}}  {r.kind:<6}  {r.wheel}")
    counts = {k: sum(r.kind == k for r in rows) for k in ("binary", "pure", "local", "other")}
    print(
        f"{len(rows)} distributions: {counts['binary']} binary {args.arch} wheels, "
        f"{counts['pure']} pure-Python wheels, {counts['local']} from a local tree, "
        f"{counts['other']} not from a wheel"
    )
    bad = [(r, p) for r in rows for p in r.problems]
    for r, problem in bad:
        print(f"error: {r.name} {r.version}: {problem}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
