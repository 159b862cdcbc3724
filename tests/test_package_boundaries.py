"""The package boundaries, read from the sources (every import, inside functions too):

- what runs on the drone (`companion`, `firmware_bridge`) imports nothing from `sim`;
- the emulated devices (`sim/vehicle`, `sim/gps`, `sim/modem`, the camera) import nothing
  from `companion`, and the vehicle nothing from the bridge it is tested against either, so
  that an emulator never shares the driver's reading of the device;
- the ground segment (`ground`) takes from `companion` only what both ends of the link share
  (the telemetry wire format, the order / signed-command / key code of
  `companion.security`, and the enrolment of a recipient's photos), never the daemon's
  internals; and nothing on the drone imports
  `ground`.

Only `sim/harness` wires the two sides together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imports_of(path: Path) -> set[str]:
    """Every module a source file imports, wherever the import statement is."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Call) and _is_dynamic_import(node):
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.add(arg.value)
    return found


def _is_dynamic_import(node: ast.Call) -> bool:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name in ("import_module", "__import__")


def sources(*folders: str) -> list[Path]:
    paths = [p for folder in folders for p in sorted((ROOT / folder).rglob("*.py"))]
    assert paths, folders
    return paths


def offending(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in paths:
        for module in sorted(imports_of(path)):
            if module.split(".")[0] in forbidden:
                name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
                bad.append(f"{name} imports {module}")
    return bad


@pytest.mark.parametrize("package", ["companion", "firmware_bridge"])
def test_what_flies_never_imports_the_simulator(package: str) -> None:
    assert offending(sources(package), ("sim",)) == []


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("sim/vehicle", ("companion", "firmware_bridge")),
        ("sim/gps", ("companion",)),
        ("sim/modem", ("companion",)),
    ],
)
def test_emulated_devices_do_not_share_the_companions_code(
    folder: str, forbidden: tuple[str, ...]
) -> None:
    assert offending(sources(folder), forbidden) == []


def test_the_camera_emulator_does_not_share_the_companions_code() -> None:
    assert offending([ROOT / "sim" / "camera.py"], ("companion",)) == []


def test_the_face_synthesiser_does_not_share_the_companions_code() -> None:
    """The faces the simulated recipient shows are made with dlib directly, so that the
    liveness check is not tested against its own reading of the landmarks."""
    assert offending([ROOT / "sim" / "faces.py"], ("companion",)) == []


#: What `ground` may import from `companion`: these modules and what is inside them. The
#: enrolment of a recipient's photos is the dispatcher's half of the face check (what
#: `skycourier order create --photo` runs too), not the daemon's.
GROUND_SHARES = (
    "companion.telemetry.schema",
    "companion.security",
    "companion.identity.enrol",
    "companion.identity.photos",
)


def qualified_imports_of(path: Path) -> set[str]:
    """Every name a source file imports, in full: ``from a.b import c`` is ``a.b.c`` (a
    module or something in one), so that a rule can tell which module of a package it is."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set(imports_of(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.discard(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _shared(module: str) -> bool:
    return any(module == name or module.startswith(name + ".") for name in GROUND_SHARES)


def test_the_ground_segment_takes_only_the_shared_code_from_the_drone() -> None:
    bad = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in sources("ground")
        for module in sorted(qualified_imports_of(path))
        if module.split(".")[0] == "companion" and not _shared(module)
    ]
    assert bad == []


@pytest.mark.parametrize("package", ["companion", "firmware_bridge"])
def test_nothing_on_the_drone_imports_the_ground_segment(package: str) -> None:
    assert offending(sources(package), ("ground",)) == []


def test_the_ground_rule_sees_which_module_of_a_package_is_imported(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from companion.telemetry import schema\n"
        "from companion.telemetry import store\n"
        "from companion.security.orders import decode_order\n"
        "import companion.daemon\n"
    )
    assert {m for m in qualified_imports_of(sample) if not _shared(m)} == {
        "companion.telemetry.store",
        "companion.daemon",
    }


def test_the_reader_sees_imports_inside_functions(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os\n"
        "def f():\n"
        "    from sim.vehicle import VehicleServer\n"
        "    import importlib\n"
        "    importlib.import_module('sim.gps')\n"
    )
    assert {"sim.vehicle", "sim.gps", "os", "importlib"} <= imports_of(sample)
    assert offending([sample], ("sim",)) == [
        "sample.py imports sim.gps",
        "sample.py imports sim.vehicle",
    ]
