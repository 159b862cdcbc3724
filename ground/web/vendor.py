"""Vendor the dispatch page's front-end libraries from the npm registry, at build time.

The page ships every asset it uses (no CDN at run time). `package.json` beside this file names
each library at an exact version and `package-lock.json` pins its sha512 integrity. This
script fetches each one with the ordinary npm client (``npm pack``), refuses a tarball whose
sha512 differs from the lockfile's, and copies the files the page needs into
``static/vendor/<name>/``, with ``static/vendor/MANIFEST.json`` recording version, integrity
and each file's SHA-256. The vendored files are committed, so installing and running the
service needs neither npm nor a network; run this again only to change a version:

    python -m ground.web.vendor            # fetch, verify, copy, write the manifest
    python -m ground.web.vendor --check    # the committed files match the manifest (offline)
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENDOR = HERE / "static" / "vendor"
MANIFEST = VENDOR / "MANIFEST.json"
#: Per package: the files of its tarball (under ``package/``) the page needs.
FILES: dict[str, tuple[str, ...]] = {
    "leaflet": (
        "dist/leaflet.js",
        "dist/leaflet.css",
        "dist/images/marker-icon.png",
        "dist/images/marker-icon-2x.png",
        "dist/images/marker-shadow.png",
        "dist/images/layers.png",
        "dist/images/layers-2x.png",
        "LICENSE",
    ),
}


class VendorError(RuntimeError):
    """A lockfile, tarball or vendored file that is not what it should be; says which."""


def locked(lockfile: Path = HERE / "package-lock.json") -> dict[str, tuple[str, str]]:
    """Each vendored package's (version, sha512 integrity) from the npm lockfile."""
    packages = json.loads(lockfile.read_text())["packages"]
    pins = {}
    for name in FILES:
        entry = packages.get(f"node_modules/{name}")
        if not entry or not str(entry.get("integrity", "")).startswith("sha512-"):
            raise VendorError(f"{lockfile}: no sha512 integrity for {name}")
        pins[name] = (entry["version"], entry["integrity"])
    return pins


def integrity(data: bytes) -> str:
    """npm's Subresource-Integrity form of a tarball: ``sha512-<base64>``."""
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def vendor() -> dict[str, object]:
    """Fetch, verify and copy every package (module doc); the manifest written."""
    manifest: dict[str, object] = {}
    for name, (version, pinned) in locked().items():
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run(
                ["npm", "pack", f"{name}@{version}", "--json", "--pack-destination", tmp],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            tarball = Path(tmp) / json.loads(out)[0]["filename"]
            got = integrity(tarball.read_bytes())
            if got != pinned:
                raise VendorError(f"{name}@{version}: tarball is {got}, the lockfile pins {pinned}")
            target = VENDOR / name
            shutil.rmtree(target, ignore_errors=True)
            files = {}
            with tarfile.open(tarball) as archive:
                for member in FILES[name]:
                    source = archive.extractfile(f"package/{member}")
                    if source is None:
                        raise VendorError(f"{name}@{version}: {member} is not a file")
                    dest = target / Path(member).relative_to(
                        "dist" if member.startswith("dist/") else "."
                    )
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(source.read())
                    files[dest.relative_to(VENDOR).as_posix()] = _sha256(dest)
        manifest[name] = {"version": version, "integrity": pinned, "files": files}
    MANIFEST.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def check() -> list[str]:
    """What is wrong with the vendored files (missing, changed, version not the lockfile's);
    empty when they are exactly what the manifest and the lockfile say."""
    problems = []
    if not MANIFEST.is_file():
        return [f"{MANIFEST} missing: run python -m ground.web.vendor"]
    manifest = json.loads(MANIFEST.read_text())
    for name, (version, pinned) in locked().items():
        entry = manifest.get(name)
        if not entry or (entry["version"], entry["integrity"]) != (version, pinned):
            problems.append(f"{name}: the manifest is not for {version} {pinned}")
            continue
        for rel, digest in entry["files"].items():
            path = VENDOR / rel
            if not path.is_file():
                problems.append(f"{rel}: missing")
            elif _sha256(path) != digest:
                problems.append(f"{rel}: differs from the manifest")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ground.web.vendor", description=__doc__)
    parser.add_argument("--check", action="store_true", help="verify the vendored files only")
    args = parser.parse_args(argv)
    try:
        if args.check:
            problems = check()
            for problem in problems:
                print(f"vendor: {problem}", file=sys.stderr)
            return 1 if problems else 0
        for name, entry in vendor().items():
            print(f"vendored {name} {entry['version']} ({entry['integrity']})")  # type: ignore[index]
    except (VendorError, subprocess.CalledProcessError, OSError, ValueError) as exc:
        print(f"vendor: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
