"""`mint train` through the real CLI: registers, trains, exports; refuses bad input with the field named."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("torch", reason="needs the [train] extra (torch)")

from mint.bases.tiny import create_tiny_base
from mint.catalog.queries import Catalog
from mint.cli import cli


@pytest.fixture
def home(tmp_path: Path) -> Path:
    create_tiny_base(tmp_path / "bases" / "tiny", seed=0)
    return tmp_path


def test_train_registers_trains_and_exports(home: Path) -> None:
    args = ["train", "--policy", "acme/x", "--policy", "acme/y", "--base", "tiny", "--algo", "sft"]
    args += ["--task", "sft-repeat:yes", "--steps", "4", "--run", "acme/first", "--home", str(home)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "run acme/first finished" in result.output
    catalog = Catalog(home / "projections" / "catalog.db")
    for policy in ("acme/x", "acme/y"):
        assert catalog.policy(policy) is not None
        (revision,) = catalog.revisions(policy)
        assert revision.revision == "first" and revision.run == "acme/first"
    assert [s.step for s in catalog.steps("acme/first") if s.policy == "acme/x"] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--task", "bogus:1"], "task: reward: 'bogus:1' is not exact:TEXT"),
        (["--task", "token:the", "--algo", "sft"], "task 'token:the' is a grpo task, not sft"),
    ],
)
def test_a_refused_run_says_why(home: Path, extra: list[str], message: str) -> None:
    args = ["train", "--policy", "acme/x", "--base", "tiny", "--algo", "grpo", "--home", str(home), *extra]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0
    assert message in result.output


def test_an_unknown_base_is_refused_before_anything_is_appended(home: Path) -> None:
    args = [
        "train",
        "--policy",
        "acme/x",
        "--base",
        "nope",
        "--algo",
        "sft",
        "--task",
        "sft-repeat:a",
        "--home",
        str(home),
    ]
    result = CliRunner().invoke(cli, args)
    assert (
        result.exit_code == 2 and "'nope' is neither a base directory nor a base installed" in result.output
    )
    assert not (home / "log.db").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--steps", "0"], "Invalid value for --steps"),
        (["--steps", str(10**30)], "Invalid value for --steps"),
        (["--policy", "acme/x"], "Invalid value for --policy: policies: acme/x listed more than once"),
    ],
)
def test_a_run_the_schema_refuses_is_refused_before_anything_is_appended(
    home: Path, extra: list[str], message: str
) -> None:
    args = ["train", "--policy", "acme/x", "--base", "tiny", "--algo", "sft", "--task", "sft-repeat:a"]
    result = CliRunner().invoke(cli, [*args, "--home", str(home), *extra])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (home / "log.db").exists()
