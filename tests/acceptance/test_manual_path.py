"""The README's manual setup, run as written: its two shell blocks, with the examples."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import _wait_healthy, free_port

ROOT = Path(__file__).resolve().parents[2]


def manual_blocks() -> list[list[str]]:
    """The shell blocks of the README's "Manual setup" section, one command per line."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Manual setup", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    return [
        [line.split("  #")[0].strip() for line in block.splitlines() if not line.startswith("#")]
        for block in blocks
    ]


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str], int]]:
    """A directory holding a copy of examples/ on free ports, and an `ordersync` on PATH."""
    hub_port, agent_port = free_port(), free_port()
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    for example in (tmp_path / "examples").glob("*.toml"):
        text = example.read_text().replace("8080", str(hub_port)).replace("9108", str(agent_port))
        example.write_text(text)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "ordersync"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m ordersync.cli "$@"\n')
    shim.chmod(0o755)
    env = os.environ | {"PATH": f"{bin_dir}:{os.environ['PATH']}", "COLUMNS": "200"}
    yield tmp_path, env, hub_port


def test_the_readme_manual_path_ends_in_sync_with_a_non_empty_replica(
    workdir: tuple[Path, dict[str, str], int],
) -> None:
    """Token for the simulator's account, hub serving and simulating, agent --once, verify:
    in sync, and the replica holds the simulated orders (it used to sync nothing)."""
    cwd, env, port = workdir
    hub_block, agent_block = manual_blocks()
    *setup, serve = [line.replace("8080", str(port)) for line in hub_block]
    for line in setup:
        subprocess.run(["bash", "-c", line], cwd=cwd, env=env, check=True, timeout=60)
    hub = subprocess.Popen(
        ["bash", "-c", f"exec {serve}"], cwd=cwd, env=env, stderr=subprocess.PIPE
    )
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", hub)  # type: ignore[arg-type]
        result = subprocess.run(
            ["bash", "-e", "-c", "\n".join(agent_block)],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        hub.terminate()
        hub.wait(timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "in sync" in result.stdout and "Traceback" not in result.stderr
    with sqlite3.connect(cwd / "erp-replica.db") as replica:
        (orders,) = replica.execute("select count(*) from orders").fetchone()
    assert orders > 0


@pytest.mark.parametrize("dialect", ["tradecloud", "hubrise"])
def test_the_other_examples_sync_from_the_same_hub(
    workdir: tuple[Path, dict[str, str], int], dialect: str
) -> None:
    """examples/tradecloud.toml and examples/hubrise.toml, with the token the README mints
    exported under their variable, fill a replica too."""
    cwd, env, port = workdir
    hub_block, _ = manual_blocks()
    *setup, serve = [line.replace("8080", str(port)) for line in hub_block]
    for line in setup:
        subprocess.run(["bash", "-c", line], cwd=cwd, env=env, check=True, timeout=60)
    hub = subprocess.Popen(["bash", "-c", f"exec {serve}"], cwd=cwd, env=env)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", hub)  # type: ignore[arg-type]
        token = (cwd / "erp.token").read_text().strip()
        result = subprocess.run(
            ["ordersync", "agent", "run", "--config", f"examples/{dialect}.toml", "--once"],
            cwd=cwd,
            env=env | {f"{dialect.upper()}_TOKEN": token},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        hub.terminate()
        hub.wait(timeout=30)
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(cwd / "erp-replica.db") as replica:
        (orders,) = replica.execute(
            "select count(*) from orders where source = ?", (dialect,)
        ).fetchone()
    assert orders > 0
