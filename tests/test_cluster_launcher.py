"""`mint cluster`: a real cluster of OS processes (moto, tansu on it, actor replicas), driven by its CLI."""

from __future__ import annotations

import json
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import click
import httpx
import pytest

from events.catalog import RegisterPolicy
from events.log import append_one
from mint.cluster.roles import ROLES
from tests.cluster import MINT, ClusterCommandFailed, RunningCluster, running_cluster

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

CONTRACT = {"processes", "api", "kafka", "topic", "s3", "bucket", "admin_token"}
PROCESS_CONTRACT = {"name", "role", "pid", "port", "home"}
ONLY_CATALOG = [
    "--projectors=0",
    "--schedulers=0",
    "--trainers=0",
    "--evaluators=0",
    "--engines=0",
    "--api=0",
]


def alive(pid: int) -> bool:
    """Whether pid runs (or is stopped); a zombie has exited."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] not in ("Z", "X")


def eventually(check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout_s}s: {check.__doc__}"
        time.sleep(0.1)


def states(cluster: RunningCluster) -> dict[str, tuple[str, bool]]:
    return {p["name"]: (p["state"], p["ready"]) for p in cluster.status()["processes"]}


def healthz(port: int) -> int:
    return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5.0).status_code


def test_a_cluster_starts_is_signalled_restarted_grown_and_stopped(tmp_path: Path) -> None:
    with running_cluster(tmp_path, catalog=1, projectors=1) as cluster:
        table = cluster.table
        assert set(table) >= CONTRACT
        assert table["ready"] is True
        assert cluster.names() == ["s3", "broker", "catalog-1", "projector-1"]
        for process in table["processes"]:
            assert set(process) >= PROCESS_CONTRACT
            assert alive(process["pid"]), process["name"]
        for name in ("catalog-1", "projector-1"):
            process = cluster.process(name)
            assert process["home"] == str(cluster.root / name)
            assert healthz(process["port"]) == 200
            assert (Path(process["home"]) / "bases" / "tiny").is_symlink()
        assert table["api"] == []
        assert table["kafka"] == f"127.0.0.1:{cluster.process('broker')['port']}"
        assert table["s3"] == f"http://127.0.0.1:{cluster.process('s3')['port']}"
        for secret in (Path(table["admin_token"]), cluster.root / "cluster.key"):
            assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
        assert cluster.admin_token().startswith("tml-")
        assert all(ready for _, ready in states(cluster).values())
        by_cli = json.loads(cluster.mint("status"))["processes"]
        assert {p["name"]: p["state"] for p in by_cli} == dict.fromkeys(cluster.names(), "running")

        # A stopped process is alive but not ready; continued, it is ready again.
        cluster.kill("projector-1", "STOP")
        assert states(cluster)["projector-1"] == ("stopped", False)
        cluster.kill("projector-1", "CONT")
        eventually(lambda: states(cluster)["projector-1"] == ("running", True))

        # The broker keeps its log in S3: a record appended before a restart is there after it.
        async def append() -> tuple[str, int, int]:
            async with cluster.log() as log:
                command = RegisterPolicy.create(policy="acme/kept", base_id="tiny")
                appended = await append_one(log, command)
                return command.id, appended.partition, appended.offset

        record_id, partition, offset = anyio.run(append)
        old_pid = cluster.process("broker")["pid"]
        restarted = cluster.restart("broker")
        assert restarted["pid"] != old_pid and not alive(old_pid)
        assert restarted["port"] == cluster.process("broker")["port"]

        async def read() -> list[str]:
            async with cluster.log() as log:
                return [stored.id for stored in await log.read(partition, offset, limit=1)]

        assert anyio.run(read) == [record_id]

        # kill -9 and restart: same port and home, a new pid, ready again.
        before = cluster.process("projector-1")
        cluster.mint("kill", "projector-1", "--signal", "KILL")
        eventually(lambda: not alive(before["pid"]))
        assert states(cluster)["projector-1"] == ("dead", False)
        after = cluster.restart("projector-1")
        assert (after["port"], after["home"]) == (before["port"], before["home"])
        assert after["pid"] != before["pid"] and healthz(after["port"]) == 200

        # Grown by one replica, then shrunk by it.
        added = cluster.add("projector")
        assert added == "projector-2"
        assert healthz(cluster.process(added)["port"]) == 200
        pid = cluster.process(added)["pid"]
        cluster.remove(added)
        assert added not in cluster.names() and not alive(pid)

        with pytest.raises(
            ClusterCommandFailed, match=r"no process named 'catalog-9'.*catalog-1, projector-1"
        ):
            cluster.mint("kill", "catalog-9")
        pids = [p["pid"] for p in cluster.refresh()["processes"]]

    assert not any(alive(pid) for pid in pids)
    assert {state for state, _ in states(cluster).values()} == {"dead"}


def test_up_that_times_out_reports_who_and_leaves_nothing_running(tmp_path: Path) -> None:
    root = tmp_path / "cluster"
    done = subprocess.run(
        [MINT, "cluster", "up", "--dir", str(root), "--catalog=1", *ONLY_CATALOG, "--timeout=3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "not ready after 3s" in done.stderr and "ends:" in done.stderr
    table = json.loads((root / "cluster.json").read_text())
    assert table["ready"] is False and table["processes"]
    assert not any(alive(p["pid"]) for p in table["processes"])


def test_up_refuses_a_directory_in_use(tmp_path: Path) -> None:
    (tmp_path / "cluster").mkdir()
    (tmp_path / "cluster" / "cluster.json").write_text("{}")
    done = subprocess.run(
        [MINT, "cluster", "up", "--dir", str(tmp_path / "cluster")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0 and "is not empty" in done.stderr


def test_the_cluster_knows_every_role_mint_actor_runs() -> None:
    from mint.cli import cli

    (name,) = [p for p in cli.commands["actor"].params if p.name == "name"]
    assert isinstance(name.type, click.Choice)
    assert set(ROLES) == set(name.type.choices)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_cluster_reports_decision_rates_their_ratio_and_router_latency() -> None:
    done = subprocess.run(
        [MINT, "bench", "cluster", "--json", "--commands", "300", "--replicas", "1,2", "--requests", "10"],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout)
    assert report["bench"] == "cluster" and report["catalog_commands"] == 300
    assert report["catalog_decisions_per_s_1"] > 0 and report["catalog_decisions_per_s_2"] > 0
    ratio = report["catalog_decisions_per_s_2"] / report["catalog_decisions_per_s_1"]
    assert report["catalog_ratio_2_vs_1"] == pytest.approx(ratio, rel=1e-3)
    assert report["router_requests"] == 10
    assert 0 < report["direct_p50_ms"] <= report["direct_p99_ms"]
    assert 0 < report["router_p50_ms"] <= report["router_p99_ms"]
    overhead = report["router_p50_ms"] - report["direct_p50_ms"]
    assert report["router_overhead_p50_ms"] == pytest.approx(overhead, rel=1e-3)
