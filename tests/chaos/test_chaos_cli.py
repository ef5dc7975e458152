"""`mint chaos run|check` refuse bad options by name before anything starts (no cluster here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from mint.cli import cli


@pytest.mark.parametrize(
    ("args", "named", "says"),
    [
        (["--faults", "kill,melt"], "--faults", "'melt' is not a fault (faults: kill, stop, or none)"),
        (["--faults", ""], "--faults", "is not a fault"),
        (["--minutes", "1", "--seconds", "5"], "--seconds", "give --minutes or --seconds, not both"),
        (["--rate", "0"], "--rate", "0"),
        (["--seconds", "-1"], "--seconds", "-1"),
        (["--every", "0"], "--every", "0"),
        (["--seed", "x"], "--seed", "'x' is not a valid integer"),
    ],
)
def test_a_bad_option_of_chaos_run_is_refused_naming_it(
    tmp_path: Path, args: list[str], named: str, says: str
) -> None:
    root = tmp_path / "cluster"
    result = CliRunner().invoke(cli, ["chaos", "run", "--root", str(root), *args])
    assert result.exit_code == 2, result.output
    assert named in result.output and says in result.output
    assert not root.exists(), "nothing started"


def test_chaos_run_refuses_a_directory_whose_cluster_is_stopped(tmp_path: Path) -> None:
    root = tmp_path / "cluster"
    root.mkdir()
    (root / "cluster.json").write_text(
        '{"processes": [], "api": [], "kafka": "127.0.0.1:1", "topic": "t", "log": "kafka://127.0.0.1:1/t",'
        ' "s3": "http://127.0.0.1:2", "bucket": "b", "broker_storage": "memory://tansu/", "artifacts": "s3://b",'
        ' "partitions": 2, "admin_token": "x", "base": "tiny", "base_source": null, "ready": false}'
    )
    result = CliRunner().invoke(cli, ["chaos", "run", "--root", str(root), "--seconds", "1"])
    assert result.exit_code == 1
    assert f"--root: the cluster in {root} is not running" in result.output


def test_chaos_check_names_a_missing_ledger_and_a_missing_cluster(tmp_path: Path) -> None:
    missing = CliRunner().invoke(
        cli, ["chaos", "check", "--root", str(tmp_path), "--ledger", str(tmp_path / "none.jsonl")]
    )
    assert missing.exit_code == 2 and "--ledger" in missing.output and "does not exist" in missing.output
    ledger = tmp_path / "ledger.jsonl"
    ledger.write_text("")
    no_cluster = CliRunner().invoke(cli, ["chaos", "check", "--root", str(tmp_path), "--ledger", str(ledger)])
    assert no_cluster.exit_code == 1 and f"no cluster in {tmp_path}" in no_cluster.output
