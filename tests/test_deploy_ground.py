"""The fleet deployment (`deploy/ground/`) checked without a container runtime: the Compose
file parses; every `skycourier ground` command line in it, and each `docker compose run` line
of its README, parses with the real `skycourier` parser into a configuration the service
accepts; the two instances share the database and the secret key but not a client id; the
brokers form one EMQX cluster; every image is pinned; nginx passes the live feed unbuffered."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("yaml", reason="install PyYAML (the dev extra: pip install -e '.[dev]')")
pytest.importorskip("sqlalchemy", reason="install the ground extra: pip install -e '.[ground]'")

import yaml

from companion.cli import build_parser
from ground.cli import _config
from ground.cli import run as ground_run
from ground.db import parse_url
from ground.ingest import parse_broker

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "ground"
INSTANCES = ("ground1", "ground2")
#: ``name:tag`` with a numeric version in the tag, e.g. ``postgres:15.8-bookworm``.
PINNED = re.compile(r"^[\w./-]+:\d+(\.\d+)+[\w.-]*$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(loaded, dict) and isinstance(loaded.get("services"), dict)
    return loaded


def _argv(service: dict[str, Any]) -> list[str]:
    """What the container runs: its entrypoint, then its command."""
    entrypoint, command = service.get("entrypoint", []), service.get("command", [])
    assert isinstance(entrypoint, list) and isinstance(command, list), "use the exec form"
    return [str(part) for part in entrypoint + command]


def _ground_args(argv: list[str]) -> argparse.Namespace:
    assert argv[:2] == ["skycourier", "ground"], argv
    try:
        args = build_parser().parse_args(argv[1:])
    except SystemExit:  # argparse has printed why on stderr
        pytest.fail(f"{shlex.join(argv)}: the skycourier parser refuses it")
    assert args.func is ground_run
    _config(args)  # the service's own checks of its settings (WebConfigError otherwise)
    parse_url(args.db)  # a URL the store takes (DatabaseUrlError otherwise)
    return args


def _instances(compose: dict[str, Any]) -> dict[str, argparse.Namespace]:
    return {name: _ground_args(_argv(compose["services"][name])) for name in INSTANCES}


def test_every_ground_command_line_parses(compose: dict[str, Any]) -> None:
    services = compose["services"]
    runs_ground = [name for name, s in services.items() if _argv(s)[:2] == ["skycourier", "ground"]]
    assert sorted(runs_ground) == ["ground-admin", "ground1", "ground2"]
    for name in runs_ground:
        _ground_args(_argv(services[name]))


def test_the_readme_commands_parse_with_the_admin_service(compose: dict[str, Any]) -> None:
    entrypoint = _argv(compose["services"]["ground-admin"])[: -len(["user", "list"])]
    lines = re.findall(
        r"docker compose run (?:--rm |-T )*ground-admin ([^#\n]+)",
        (DEPLOY / "README.md").read_text(),
    )
    assert len(lines) >= 3, "the README shows how to add an operator"
    parsed = [_ground_args(entrypoint + shlex.split(line)) for line in lines]
    adds = [a for a in parsed if a.ground_command == "user" and a.user_command == "add"]
    assert adds and all(a.password_stdin for a in adds)
    assert any(a.ground_command == "track-link" for a in parsed)


def test_the_instances_share_the_database_and_key_but_not_a_session(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    args = _instances(compose)
    one, two = args.values()
    assert one.client_id != two.client_id
    admin = _ground_args(_argv(services["ground-admin"]))
    assert one.db == two.db == admin.db
    assert one.secret_file == two.secret_file == admin.secret_file
    for name in (*INSTANCES, "ground-admin"):
        assert services[name]["secrets"] == ["ground_secret"]
        assert "PGPASSWORD" in services[name]["environment"]  # not in the URL
    assert one.secret_file.as_posix() == "/run/secrets/ground_secret"
    assert compose["secrets"]["ground_secret"]["file"]
    assert parse_url(one.db).password is None
    assert parse_url(one.db).host == "postgres"
    for name, a in args.items():
        assert a.bind == "0.0.0.0" and "ports" not in services[name]  # reached through nginx
        host, _ = parse_broker(a.broker)
        assert host in services and host.startswith("emqx")
        needs = services[name]["depends_on"]
        assert needs["postgres"]["condition"] == "service_healthy"
        assert needs[host]["condition"] == "service_healthy"
        assert f":{a.port}/" in " ".join(services[name]["healthcheck"]["test"])
    assert len({a.broker for a in args.values()}) == 2  # one instance on each node


def test_the_brokers_form_one_emqx_cluster(compose: dict[str, Any]) -> None:
    services = compose["services"]
    nodes = {}
    for name in ("emqx1", "emqx2"):
        env = services[name]["environment"]
        assert env["EMQX_CLUSTER__DISCOVERY_STRATEGY"] == "static"
        node = env["EMQX_NODE__NAME"]
        host = node.split("@", 1)[1]
        assert "." in host, "EMQX runs long names: the host part needs a dot"
        assert host in services[name]["networks"]["backend"]["aliases"]
        nodes[name] = (node, env["EMQX_CLUSTER__STATIC__SEEDS"])
    (node1, seeds1), (node2, seeds2) = nodes.values()
    assert node1 != node2 and seeds1 == seeds2
    assert seeds1.strip("[]").split(",") == [node1, node2]
    assert int(services["emqx1"]["environment"]["EMQX_MQTT__MAX_MQUEUE_LEN"]) > 1000


def test_postgres_keeps_its_data_and_says_when_it_is_ready(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    assert postgres["image"].startswith("postgres:15.")
    volume = postgres["volumes"][0].split(":")[0]
    assert volume in compose["volumes"]  # a named volume, not the container's layer
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])


def test_every_image_is_pinned(compose: dict[str, Any]) -> None:
    images = [s["image"] for s in compose["services"].values()]
    bases = re.findall(r"^FROM\s+(\S+)", (DEPLOY / "Dockerfile").read_text(), re.MULTILINE)
    assert bases and len(images) == len(compose["services"])
    for image in images + bases:
        assert PINNED.match(image), f"{image}: name a version, never latest"
    assert bases[0].startswith("python:3.11.") and "-slim" in bases[0]


def test_the_image_runs_as_a_user_with_the_ground_extra() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert "pip install '.[ground]'" in dockerfile
    assert re.search(r'^ENTRYPOINT \["skycourier"\]', dockerfile, re.MULTILINE)


def _block(text: str, opening: str) -> str:
    """The body of the nginx block that `opening` starts (braces balanced)."""
    start = text.index(opening) + len(opening)
    depth, i = 1, start
    while depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[start : i - 1]


def test_the_proxy_spreads_requests_and_streams_the_live_feed(compose: dict[str, Any]) -> None:
    conf = re.sub(r"#[^\n]*", "", (DEPLOY / "nginx.conf").read_text())
    assert conf.count("{") == conf.count("}")
    upstream = _block(conf, "upstream ground {")
    servers = re.findall(r"server\s+([\w.-]+):(\d+)", upstream)
    args = _instances(compose)
    assert sorted(servers) == sorted((name, str(a.port)) for name, a in args.items())
    live = _block(conf, "location = /api/live {")
    assert re.search(r"proxy_buffering\s+off;", live)
    timeout = re.search(r"proxy_read_timeout\s+(\d+)([smh]?);", live)
    assert timeout, "a live stream outlives nginx's default 60 s read timeout"
    seconds = int(timeout.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[timeout.group(2)]
    assert seconds >= 600
    assert "proxy_pass http://ground;" in live
    proxy = compose["services"]["proxy"]
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in proxy["volumes"]
