"""deploy/check-arm64.sh and deploy/wheel-report.py: SkyCourier installs on arm64 from wheels.

The full check (Debian bookworm arm64 under qemu, the Raspberry Pi install with pip refusing
source distributions, the package run under emulation) takes 20-40 minutes, so it runs only
where a bootstrapped root is named by SKYCOURIER_ARM64_ROOTFS. What runs always: the script's
dry run (the steps and the exact commands, nothing created) and its argument errors, and the
wheel report against hand-made installed distributions, one for each way a dependency can fail
the wheels-only rule.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
CHECK = DEPLOY / "check-arm64.sh"
REPORT = DEPLOY / "wheel-report.py"


def _check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(CHECK), *args], capture_output=True, text=True, timeout=60, check=False
    )


# -- check-arm64.sh without emulation -----------------------------------------------------------


def test_dry_run_prints_each_step_and_creates_nothing(tmp_path: Path) -> None:
    rootfs = tmp_path / "arm64"
    result = _check("--dry-run", str(rootfs))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    steps = [line for line in out.splitlines() if line.startswith("== ")]
    assert [s.split()[1] for s in steps] == ["1.", "2.", "3.", "4.", "5.", "6.", "done"]
    base, pi = rootfs / "bootstrap", rootfs / "pi"
    assert (
        f"would run: debootstrap --arch=arm64 --foreign --include=ca-certificates\\,python3 "
        f"bookworm {base} http://deb.debian.org/debian" in out
    )
    assert f"would run: chroot {base} env -i " in out
    assert out.index("--foreign") < out.index("/debootstrap/debootstrap --second-stage")
    assert f"would run: rsync -aHAX {base}/ {pi}/" in out
    (install,) = [ln for ln in out.splitlines() if ln.startswith("would run:") and "install-" in ln]
    assert install.startswith(f"would run: chroot {pi} env -i ")
    # Every pip inside refuses sdists; the pure-data one without a wheel is exempted by name.
    assert f"would write {pi}/etc/pip.conf: [global] only-binary = :all:" in out
    assert install.endswith(
        " PIP_NO_BINARY=face-recognition-models PIP_USE_PEP517=1 PIP_PROGRESS_BAR=off"
        " bash /usr/local/src/skycourier/deploy/install-raspberrypi.sh"
    )
    assert out.index("etc/pip.conf") < out.index(install)
    assert "wheel-report.py --arch aarch64 --local skycourier" in out
    assert "skycourier check --config /etc/skycourier/skycourier.toml" in out
    assert not rootfs.exists()


def test_dry_run_with_proot_runs_everything_through_qemu(tmp_path: Path) -> None:
    rootfs = tmp_path / "arm64"
    result = _check("--dry-run", "--runner", "proot", "--no-models", str(rootfs))
    assert result.returncode == 0, result.stdout + result.stderr
    inside = [line for line in result.stdout.splitlines() if " env -i " in line]
    assert len(inside) >= 5
    for line in inside:
        assert line.startswith("would run: proot -0 -q qemu-aarch64-static -r "), line
    assert "mount " not in result.stdout  # PRoot binds /dev and /proc itself
    install = next(line for line in inside if "install-raspberrypi.sh" in line)
    assert install.endswith("install-raspberrypi.sh --no-models")
    assert not rootfs.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "no ROOTFS given"),
        (("--runner", "docker", "/tmp/x"), "--runner is auto, chroot or proot, not 'docker'"),
        (("--mirror",), "--mirror needs a value"),
        (("--bogus", "/tmp/x"), "unknown option --bogus"),
        (("/tmp/a", "/tmp/b"), "one ROOTFS only"),
        ((str(DEPLOY / "root"),), "is inside the checkout"),
    ],
)
def test_bad_arguments_are_named(args: tuple[str, ...], message: str) -> None:
    result = _check("--dry-run", *args)
    assert result.returncode == 1
    assert message in result.stderr, result.stderr
    assert not (DEPLOY / "root").exists()


# -- wheel-report.py on hand-made distributions -------------------------------------------------


def _dist(site: Path, name: str, version: str, tags: list[str] | None, url: str = "") -> None:
    """An installed distribution as pip leaves it: METADATA, WHEEL with its tags (None: no
    WHEEL record, as a legacy `setup.py install`) and, for a local tree, direct_url.json."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    if tags is not None:
        lines = ["Wheel-Version: 1.0", "Generator: test", "Root-Is-Purelib: false"]
        (info / "WHEEL").write_text("\n".join([*lines, *(f"Tag: {t}" for t in tags)]) + "\n")
    if url:
        (info / "direct_url.json").write_text(json.dumps({"url": url, "dir_info": {}}))


def _report(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPORT), "--arch", "aarch64", "--path", str(site), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _good_site(site: Path) -> None:
    _dist(site, "numpy", "2.2.6", ["cp311-cp311-manylinux_2_17_aarch64",
                                   "cp311-cp311-manylinux2014_aarch64"])  # fmt: skip
    _dist(site, "pyserial", "3.5", ["py2-none-any", "py3-none-any"])
    _dist(site, "skycourier", "0.1.0", ["py3-none-any"], url="file:///usr/local/src/skycourier")


def test_aarch64_and_pure_wheels_pass_and_each_is_listed_with_its_file(tmp_path: Path) -> None:
    _good_site(tmp_path)
    result = _report(tmp_path, "--local", "skycourier")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[:-1]]
    assert rows == [
        ["numpy", "binary",
         "numpy-2.2.6-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"],
        ["pyserial", "pure", "pyserial-3.5-py2.py3-none-any.whl"],
        ["skycourier", "local", "skycourier-0.1.0-py3-none-any.whl"],
    ]  # fmt: skip
    assert result.stdout.splitlines()[-1] == (
        "3 distributions: 1 binary aarch64 wheels, 1 pure-Python wheels, 1 from a local tree, "
        "0 not from a wheel"
    )


@pytest.mark.parametrize(
    ("name", "tags", "url", "problem"),
    [
        ("opencv-python-headless", ["cp37-abi3-manylinux_2_17_x86_64"], "",
         "not an aarch64 wheel: manylinux_2_17_x86_64"),
        ("dlib-bin", ["cp311-cp311-linux_aarch64"], "",
         "linux_aarch64: compiled on this machine"),
        ("face-recognition-models", None, "", "no WHEEL record: not installed from a wheel"),
        ("ortools", [], "", "its WHEEL record lists no Tag"),
        ("mylib", ["py3-none-any"], "file:///home/pi/mylib",
         "installed from a local source tree (file:///home/pi/mylib), not from an index"),
        ("odd", ["cp311-cp311-android_21_aarch64"], "",
         "no manylinux/musllinux platform: android_21_aarch64"),
    ],
)  # fmt: skip
def test_each_way_of_failing_the_wheels_only_rule_is_named(
    tmp_path: Path, name: str, tags: list[str] | None, url: str, problem: str
) -> None:
    _good_site(tmp_path)
    _dist(tmp_path, name, "1.0", tags, url=url)
    result = _report(tmp_path, "--local", "skycourier")
    assert result.returncode == 1
    errors = result.stderr.splitlines()
    assert len(errors) == 1 and errors[0].startswith(f"error: {name} 1.0: {problem}"), errors


def test_a_local_tree_is_refused_unless_named(tmp_path: Path) -> None:
    _good_site(tmp_path)
    result = _report(tmp_path)
    assert result.returncode == 1
    assert "error: skycourier 0.1.0: installed from a local source tree" in result.stderr


def test_an_empty_environment_is_no_pass(tmp_path: Path) -> None:
    result = _report(tmp_path)
    assert result.returncode == 1
    assert "no distributions found" in result.stderr


# -- the full check under emulation ----------------------------------------------------------


@pytest.mark.timeout(3700)
def test_install_in_an_emulated_bookworm_arm64_from_wheels_only() -> None:
    rootfs = os.environ.get("SKYCOURIER_ARM64_ROOTFS")
    if not rootfs:
        pytest.skip(
            "set SKYCOURIER_ARM64_ROOTFS to a root prepared with `sudo deploy/check-arm64.sh "
            "--bootstrap-only /work/arm64-root` (needs debootstrap, qemu-user-static, rsync; "
            "the check takes 20-40 minutes)"
        )
    if not (Path(rootfs) / "bootstrap.done").is_file():
        pytest.skip(f"{rootfs} is not bootstrapped: sudo deploy/check-arm64.sh --bootstrap-only "
                    f"{rootfs}")  # fmt: skip
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        pytest.skip("the check needs root and debootstrap, qemu-user-static, rsync installed")
    result = subprocess.run(
        ["bash", str(CHECK), rootfs], capture_output=True, text=True, timeout=3600, check=False
    )
    out = result.stdout
    assert result.returncode == 0, out[-8000:] + result.stderr[-4000:]
    assert "from a local tree, 0 not from a wheel" in out
    assert "pip built from source: face-recognition-models skycourier\n" in out
    (providers,) = [ln for ln in out.splitlines() if ln.startswith("onnxruntime providers:")]
    assert "CPUExecutionProvider" in providers.split(": ", 1)[1].split(", ")
    assert '"class_name":"bus"' in out  # skycourier detect, int8 model, on the sample image
    assert "skycourier check: exit status 1" in out
    assert "second install: files, users and packages unchanged" in out
