"""Configuration loading: defaults, the example file, and errors that name the bad field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from companion.config import Config, ConfigError, default_config_toml, load_config, parse_config
from companion.geo import bearing_deg, distance_m

EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "skycourier.example.toml"


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "skycourier.toml")
    return str(info.value)


def test_no_file_gives_the_defaults() -> None:
    config = load_config(None)
    assert config == Config()
    assert config.vehicle.connection == "tcp:127.0.0.1:5760"
    assert (config.companion.system_id, config.companion.component_id) == (1, 191)
    assert (config.flight.cruise_alt_m, config.flight.handover_alt_m) == (30.0, 5.0)
    assert config.flight.altitude_ceiling_m == 120.0
    assert (config.delivery.distance_m, config.delivery.bearing_deg) == (500.0, 45.0)
    assert config.sim.home == (-35.363261, 149.165230, 584.0)
    assert config.sim.wind is None
    assert config.journal.path == Path("skycourier-journal.db")
    assert (config.logging.level, config.logging.format, config.logging.file) == (
        "INFO",
        "text",
        None,
    )


def test_example_file_loads_and_equals_the_defaults() -> None:
    assert load_config(EXAMPLE) == Config()


def test_example_file_is_the_generated_one() -> None:
    """Keeps the example in step with the model: every option, every description."""
    assert EXAMPLE.read_text(encoding="utf-8") == default_config_toml(), (
        "deploy/skycourier.example.toml is stale; regenerate it with: python -c "
        "'from companion.config import default_config_toml as d; print(d(), end=\"\")' "
        "> deploy/skycourier.example.toml"
    )


def test_every_commented_example_in_the_example_file_is_valid() -> None:
    """Uncomment the first example of every option together, then the second, and so on (some
    go together, such as delivery.lat and delivery.lon); each variant must load."""
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    by_key: dict[str, list[int]] = {}
    for i, line in enumerate(lines):
        if re.match(r"# \w+ = ", line):
            by_key.setdefault(line[2:].split(" =")[0], []).append(i)
    assert by_key, "the example file shows commented-out examples"
    for variant in range(max(len(v) for v in by_key.values())):
        text = list(lines)
        for key, indices in by_key.items():
            if variant >= len(indices):
                continue
            i = indices[variant]
            text[i] = lines[i][2:]
            j = i - 1  # an example of a set option replaces its value (no duplicate keys)
            while not lines[j].startswith("["):
                if lines[j].startswith(f"{key} = "):
                    text[j] = ""
                j -= 1
        config = parse_config("\n".join(text), f"example variant {variant}")
        assert config != Config()


def test_round_trip_of_a_non_default_config(tmp_path: Path) -> None:
    text = """
[vehicle]
connection = "/dev/serial/by-id/usb-ArduPilot_Pixhawk6C_36004E-if00:115200"
command_retries = 5
[flight]
altitude_ceiling_m = 100
cruise_alt_m = 60
handover_alt_m = 8
[delivery]
lat = -35.36
lon = 149.17
[logging]
level = "debug"
format = "json"
file = "/tmp/sky.log"
"""
    path = tmp_path / "sky.toml"
    path.write_text(text, encoding="utf-8")
    config = load_config(path)
    assert config.vehicle.endpoint.kind == "serial"
    assert config.vehicle.endpoint.port_or_baud == 115200
    assert config.flight.cruise_alt_m == 60.0
    assert config.logging.level == "DEBUG"
    assert config.logging.file == Path("/tmp/sky.log")
    assert parse_config(config.to_toml()) == config


@pytest.mark.parametrize(
    ("spec", "kind"),
    [
        ("tcp:127.0.0.1:5760", "tcp"),
        ("udp:0.0.0.0:14550", "udpin"),
        ("udpout:192.168.1.10:14550", "udpout"),
        ("serial:/dev/ttyAMA0:921600", "serial"),
        ("/dev/ttyACM0:115200", "serial"),
        ("/dev/serial/by-id/usb-Hex_ProfiCNC_CubeOrange_2E0027-if00:57600", "serial"),
    ],
)
def test_accepted_connection_forms(spec: str, kind: str) -> None:
    config = parse_config(f'[vehicle]\nconnection = "{spec}"\n')
    assert config.vehicle.endpoint.kind == kind


def test_the_ceiling_message_reads_as_documented() -> None:
    assert _error("[flight]\ncruise_alt_m = 150\n") == (
        "skycourier.toml: flight.cruise_alt_m: must be below flight.altitude_ceiling_m (120 m), "
        "got 150"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # wrong type (a quoted number is not a number)
        ('[flight]\ncruise_alt_m = "30"\n', "flight.cruise_alt_m: input should be a valid number"),
        ("[vehicle]\ncommand_retries = 1.5\n", "vehicle.command_retries: input should be a valid"),
        ("flight = 3\n", "flight: input should be a valid dictionary"),
        # out of range
        ("[sim]\nspeedup = 0\n", "sim.speedup: input should be greater than 0, got 0"),
        ("[vehicle]\ntarget_system = 256\n", "vehicle.target_system: input should be less"),
        ("[delivery]\nbearing_deg = 360\n", "delivery.bearing_deg: input should be less than 360"),
        ("[flight]\ncruise_speed_mps = nan\n", "flight.cruise_speed_mps: input should be a finite"),
        # unknown keys, with the nearest known name
        ("[flight]\ncruise_alt = 30\n", "flight.cruise_alt: unknown option; did you mean"),
        ("[flihgt]\ncruise_alt_m = 30\n", "flihgt: unknown section; did you mean 'flight'?"),
        # options that depend on each other
        ("[flight]\nhandover_alt_m = 30\n", "flight.handover_alt_m: must be below flight.cruise"),
        (
            "[flight]\naltitude_ceiling_m = 25\n",
            "flight.cruise_alt_m: must be below flight.altitude_ceiling_m (25 m), got 30",
        ),
        ("[delivery]\nlat = -35.0\n", "delivery.lon: missing: delivery.lat is set"),
        ("[delivery]\ndistance_m = 800\n", "delivery.distance_m: must be at most delivery.max"),
        (
            "[delivery]\nmax_range_m = 400\n",
            "delivery.distance_m: must be at most delivery.max_range_m (400 m), got 500",
        ),
        ("[delivery]\nlon = 149.0\n", "delivery.lon: delivery.lon is set, so delivery.lat"),
        # connection strings, through firmware_bridge.endpoint
        ('[vehicle]\nconnection = "tcpx:1.2.3.4:5760"\n', "vehicle.connection: 'tcpx:1.2.3.4:"),
        ('[vehicle]\nconnection = "tcp:localhost:99999"\n', "port must be a number"),
        ('[vehicle]\nconnection = "/dev/ttyAMA0:12345"\n', "baud rate '12345' is not one of"),
        ('[vehicle]\nconnection = "/dev/ttyAMA0"\n', "vehicle.connection: '/dev/ttyAMA0'"),
        # enumerations
        ('[logging]\nformat = "xml"\n', "logging.format: input should be 'text' or 'json'"),
        ('[logging]\nlevel = "LOUD"\n', "logging.level: input should be"),
    ],
)
def test_invalid_values_name_the_field_and_why(text: str, expected: str) -> None:
    message = _error(text)
    assert message.startswith("skycourier.toml: ")
    assert expected in message


def test_broadcast_target_component_is_refused_saying_what_to_use() -> None:
    """With 0 the link waited forever for a heartbeat no component sends from id 0."""
    message = _error("[vehicle]\ntarget_component = 0\n")
    assert message.startswith("skycourier.toml: vehicle.target_component: 0 is the broadcast id")
    assert "never come up" in message and "1 (MAV_COMP_ID_AUTOPILOT1) on ArduPilot" in message
    assert parse_config("[vehicle]\ntarget_component = 1\n").vehicle.target_component == 1


@pytest.mark.parametrize("section", ["gps", "modem"])
@pytest.mark.parametrize("path", ["", " ", "\\t \\n"])
def test_an_empty_device_path_is_refused_saying_how_to_have_none(section: str, path: str) -> None:
    """An empty port used to pass the check and fail only when the daemon opened it."""
    message = _error(f'[{section}]\nport = "{path}"\n')
    assert message.startswith(f"skycourier.toml: {section}.port: empty device path")
    assert f"delete port from [{section}] to leave it unset" in message
    assert getattr(parse_config(f"[{section}]\n"), section).port is None


def test_all_problems_are_reported_one_per_line() -> None:
    message = _error("[flight]\ncruise_speed_mps = -1\n[sim]\nspeedup = 0\n")
    lines = message.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("skycourier.toml: flight.cruise_speed_mps: ")
    assert lines[1].startswith("skycourier.toml: sim.speedup: ")


def test_toml_syntax_error_gives_the_line() -> None:
    message = _error('[vehicle]\nconnection = "tcp:127.0.0.1:5760"\ntarget_system = = 1\n')
    assert message.startswith("skycourier.toml: TOML syntax error: ")
    assert "line 3" in message


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match=re.escape(f"{path}: no such file")):
        load_config(path)


def test_a_directory_or_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)
    binary = tmp_path / "bad.toml"
    binary.write_bytes(b'[vehicle]\nconnection = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(binary)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "skycourier.toml"
    path.write_text("[flight]\nhandover_alt_m = 50\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: flight.handover_alt_m: ")
    assert info.value.problems == [
        "flight.handover_alt_m: must be below flight.cruise_alt_m (30 m), got 50"
    ]


def test_config_is_immutable() -> None:
    config = Config()
    with pytest.raises(ValidationError):
        config.flight.cruise_alt_m = 200  # type: ignore[misc]


def test_drop_point_from_distance_and_bearing_or_explicit() -> None:
    config = Config()
    home = (config.sim.home_lat, config.sim.home_lon)
    lat, lon = config.delivery.drop_point(*home)
    assert distance_m(*home, lat, lon) == pytest.approx(500.0, abs=0.01)
    assert bearing_deg(*home, lat, lon) == pytest.approx(45.0, abs=0.01)
    explicit = parse_config("[delivery]\nlat = -35.36\nlon = 149.17\n")
    assert explicit.delivery.drop_point(*home) == (-35.36, 149.17)


def test_wind_is_offered_only_when_blowing() -> None:
    config = parse_config("[sim]\nwind_speed_mps = 5\nwind_from_deg = 270\n")
    assert config.sim.wind == (5.0, 270.0)


def test_overrides_are_validated_and_name_their_source() -> None:
    config = Config().updated("command line", sim={"speedup": 5}, delivery={"distance_m": 700})
    assert (config.sim.speedup, config.delivery.distance_m) == (5.0, 700.0)
    assert config.sim.home_lat == Config().sim.home_lat
    with pytest.raises(ConfigError) as info:
        Config().updated("command line", delivery={"distance_m": 5000})
    assert str(info.value).startswith("command line: delivery.distance_m: must be at most")
    with pytest.raises(ConfigError, match="command line: simm: unknown section"):
        Config().updated("command line", simm={"speedup": 5})
