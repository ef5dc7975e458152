"""`mint up --walkthrough` (the control plane under injected crashes) and `mint up`'s shutdown, through
the real CLI on a fresh home."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from mint.cli import cli


def test_the_walkthrough_ends_with_replay_equal_to_live(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["up", "--walkthrough", "--seed", "3", "--port", "0", "--home", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "acme/support    serves r1  (served so far: r1)" in result.output
    assert "failed evaluation smoke v1: score 0.48" in result.output
    assert "key: 'acme/support' belongs to another tenant than 'globex'" in result.output
    assert "the retry was refused as a duplicate" in result.output
    assert "replay equal" in result.output
    verify = CliRunner().invoke(cli, ["replay", "verify", "--home", str(tmp_path)])
    assert verify.exit_code == 0 and "OK: replay equals live" in verify.output


def test_mint_up_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "MINT_HOME": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from mint.cli import main; main()", "up", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("Ctrl-C"):
            break
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    assert proc.wait(timeout=30) == 0
    assert "stopping on SIGTERM" in rest
    assert (tmp_path / "projections" / "catalog.db").exists()
