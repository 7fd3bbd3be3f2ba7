"""A real Ray cluster on this machine, for the Ray tests and the executor benchmark.

``ray start`` a head on 127.0.0.1 and more nodes that join it, each with its own CPUs and
custom resources, as a user would on several machines. Stopping kills exactly this
cluster's processes (those naming its own temp folder, and their children), never another
Ray on the machine, as ``ray stop`` would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

RAY = Path(sys.executable).with_name("ray")
OBJECT_STORE_BYTES = 100_000_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes() -> dict[int, tuple[int, bytes]]:
    """Every process: pid -> (parent pid, command line)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        table[int(entry.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmdline)
    return table


def cluster_pids(temp_dir: str) -> set[int]:
    """The processes of the cluster living in ``temp_dir``, with all their descendants."""
    table = _processes()
    pids = {pid for pid, (_, cmd) in table.items() if temp_dir.encode() in cmd}
    grew = True
    while grew:
        children = {pid for pid, (parent, _) in table.items() if parent in pids} - pids
        pids |= children
        grew = bool(children)
    return pids - {os.getpid()}


def _signal(pids: set[int], sig: int) -> None:
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, sig)


def _stop(temp_dir: str, grace_s: float = 5.0) -> None:
    pids = cluster_pids(temp_dir)
    _signal(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.2)
    _signal(pids, signal.SIGKILL)


def _start(args: list[str], env: dict) -> None:
    result = subprocess.run(
        [str(RAY), "start", *args], capture_output=True, text=True, env=env, timeout=180
    )
    if result.returncode != 0:
        raise RuntimeError(f"ray start {' '.join(args)} failed:\n{result.stdout}{result.stderr}")


@contextmanager
def ray_cluster(nodes: list[dict], env: dict | None = None) -> Iterator[str]:
    """Start one node per entry of ``nodes`` (``{"num_cpus": N, "resources": {...}}``;
    the first is the head); yields the cluster's address. ``env`` is added to the nodes'
    environment, which their workers inherit."""
    temp_dir = tempfile.mkdtemp(prefix="cxr-ray-", dir="/tmp")  # short: it holds sockets
    port = _free_port()
    address = f"127.0.0.1:{port}"
    node_env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **(env or {})}
    try:
        for i, node in enumerate(nodes):
            common = [
                "--node-ip-address=127.0.0.1",
                f"--num-cpus={node.get('num_cpus', 1)}",
                "--num-gpus=0",
                f"--resources={json.dumps(node.get('resources', {}))}",
                f"--object-store-memory={OBJECT_STORE_BYTES}",
                "--disable-usage-stats",
            ]
            if i == 0:
                head = ["--head", f"--port={port}", f"--temp-dir={temp_dir}"]
                _start([*head, "--include-dashboard=false", *common], node_env)
            else:
                _start([f"--address={address}", *common], node_env)
        yield address
    finally:
        _stop(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
