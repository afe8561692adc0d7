"""The deployment files as a machine without a container builder can check them: compose.yaml,
the systemd units and the Dockerfile only run commands and options the CLI has, they agree with
each other (ports, paths), the lock file covers every dependency, and the hub and agent run on
asyncio's own loop (the path Windows takes)."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from ordersync.cli import app

ROOT = Path(__file__).resolve().parents[2]
UNITS = sorted((ROOT / "deploy").glob("*.service"))


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def ordersync_invocations(text: str) -> list[list[str]]:
    """Each `ordersync ...` command in a shell line, up to its redirection or `&&`."""
    found = []
    for match in re.finditer(r"(?:^|[\s/;&|])ordersync\s+([^;&|>]+)", text):
        found.append(shlex.split(match.group(1)))
    return found


def compose_invocations() -> list[list[str]]:
    commands = []
    for service in compose()["services"].values():
        if not str(service.get("image", "")).startswith("ordersync"):
            continue
        command = service.get("command", [])
        if service.get("entrypoint") == ["sh", "-c"]:
            for line in command:
                commands += ordersync_invocations(line)
        else:
            commands.append(list(command))
    return commands


def unit_invocations() -> list[list[str]]:
    commands = []
    for unit in UNITS:
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read(unit)
        for key in ("ExecStartPre", "ExecStart"):
            if parser.has_option("Service", key):
                argv = shlex.split(parser.get("Service", key))
                assert argv[0] == "/opt/ordersync/bin/ordersync"
                commands.append(argv[1:])
    return commands


def check_against_help(argv: list[str]) -> None:
    """The subcommand path exists and each --option it uses is in that command's --help."""
    path = [word for word in argv if not word.startswith("-")]
    options = [word.split("=")[0] for word in argv if word.startswith("--")]
    for depth in range(len(path), 0, -1):  # the longest prefix that is a command
        result = CliRunner().invoke(app, [*path[:depth], "--help"])
        if result.exit_code == 0 and "Usage:" in result.output:
            break
    else:
        pytest.fail(f"no such command: ordersync {' '.join(argv)}")
    assert path[0] in ("hub", "agent"), argv
    assert "COMMAND [ARGS]" not in result.output, f"ordersync {' '.join(argv)}: not a command"
    for option in options:
        assert option in result.output, f"ordersync {' '.join(argv)}: no {option}"


def test_every_command_compose_and_the_units_run_exists() -> None:
    commands = compose_invocations() + unit_invocations()
    assert len(commands) >= 6
    assert {tuple(c[:2]) for c in commands} >= {
        ("hub", "migrate"),
        ("hub", "token"),
        ("hub", "serve"),
        ("agent", "run"),
    }
    for argv in commands:
        check_against_help(argv)


def test_compose_runs_the_hub_on_postgresql_and_prometheus_scrapes_both() -> None:
    services = compose()["services"]
    assert {"postgres", "hub", "agent", "prometheus"} <= set(services)
    hub_db = services["hub"]["environment"]["ORDERSYNC_HUB_DB"]
    assert hub_db.startswith("postgresql://") and "@postgres:5432/" in hub_db
    assert services["hub-init"]["environment"]["ORDERSYNC_HUB_DB"] == hub_db
    serve = services["hub"]["command"]
    assert serve[serve.index("--host") + 1] == "0.0.0.0"
    hub_port = serve[serve.index("--port") + 1]
    agent_config = tomllib.loads((ROOT / "deploy" / "agent.toml").read_text())
    assert agent_config["sources"][0]["base_url"] == f"http://hub:{hub_port}/api/v1"
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = {
        t for job in prometheus["scrape_configs"] for t in job["static_configs"][0]["targets"]
    }
    assert targets == {f"hub:{hub_port}", f"agent:{agent_config['port']}"}
    for mount in services["agent"]["volumes"] + services["prometheus"]["volumes"]:
        source = mount.split(":")[0]
        if source.startswith("./"):
            assert (ROOT / source).is_file(), source


def test_the_compose_agent_config_is_valid_for_the_agent() -> None:
    from ordersync.agent.config import AgentConfig, load_config

    if "bind" not in AgentConfig.model_fields:
        pytest.skip("this agent has no bind setting yet (it listens on 127.0.0.1 only)")
    config = load_config(ROOT / "deploy" / "agent.toml", {"MASONHUB_TOKEN": "x"})
    assert config.port == 9108


def test_the_dockerfile_copies_what_exists_and_installs_from_the_lock() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for line in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.MULTILINE):
        for source in line.split():
            assert (ROOT / source).exists(), source
    assert "-r requirements.lock" in text and "--no-deps ." in text
    assert 'ENTRYPOINT ["ordersync"]' in text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    """`systemd-analyze verify` finds nothing to say (the binary path pointed at this one)."""
    binary = shutil.which("ordersync") or str(Path(sys.executable).parent / "ordersync")
    if not Path(binary).exists():
        pytest.skip("no ordersync executable to point the units at")
    copies = []
    for unit in UNITS:
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace("/opt/ordersync/bin/ordersync", binary))
        copies.append(str(copy))
    result = subprocess.run(
        ["systemd-analyze", "verify", *copies], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def test_dependencies_are_ranges_and_the_lock_pins_each_one() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["dev"]
    assert all("==" not in spec for spec in wanted)
    locked = {
        line.split("==")[0].lower().replace("_", "-")
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    for spec in wanted:
        name = re.split(r"[\[<>=;! ]", spec, maxsplit=1)[0].lower().replace("_", "-")
        assert name in locked, f"{name} is not in requirements.lock (make lock)"
    uvloop = next(spec for spec in project["dependencies"] if spec.startswith("uvloop"))
    assert "sys_platform != 'win32'" in uvloop


def test_hub_and_agent_sync_on_asyncio_s_own_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ORDERSYNC_LOOP=asyncio (what a machine without uvloop runs): a hub serves and an agent
    drains it once, every order landing in the replica."""
    import sqlite3

    import httpx

    from tests.acceptance.test_demo_and_agent_cli import write_config
    from tests.support import ORDERSYNC_CLI, cli_token, hub_process, order_payload

    db = f"sqlite:///{tmp_path}/hub.db"
    token = cli_token(db)
    monkeypatch.setenv("ORDERSYNC_LOOP", "asyncio")  # the hub's process and the agent's
    env = {**os.environ, "MASONHUB_TOKEN": token}
    with hub_process(db) as base:
        created = httpx.post(
            f"{base}/api/v1/orders",
            headers={"Authorization": f"Bearer {token}"},
            json=[order_payload(f"L-{i}") for i in range(4)],
        )
        assert created.status_code == 201
        config = write_config(tmp_path / "agent.toml", f"{base}/api/v1")
        result = subprocess.run(
            [*ORDERSYNC_CLI, "agent", "run", "--config", str(config), "--once"],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(tmp_path / "replica.db") as replica:
        assert replica.execute("SELECT count(*) FROM orders").fetchone() == (4,)


def test_an_unknown_event_loop_is_one_line_exit_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ordersync.cli",
            "hub",
            "serve",
            "--db",
            f"sqlite:///{tmp_path}/h.db",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "ORDERSYNC_LOOP": "trio"},
        check=False,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: ORDERSYNC_LOOP='trio': use one of auto, uvloop, asyncio"
    ]
