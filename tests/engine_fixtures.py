"""Fixtures every engine backend's tests share: the tiny base and real PEFT adapters of it.
Registered as a plugin in conftest.py; torch is imported only when a test asks for them."""

from __future__ import annotations

from pathlib import Path

import pytest

from mint.serving.engine import AdapterRef

TARGETS = ("q_proj", "v_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mint.bases.tiny import create_tiny_base

    directory = tmp_path_factory.mktemp("engine") / "tiny"
    create_tiny_base(directory, seed=0)
    return directory


def make_adapter(base_dir: Path, root: Path, name: str, seed: int) -> AdapterRef:
    from mint.adapters.peft_layout import write_peft
    from mint.adapters.synthetic import random_adapter
    from mint.bases.info import read_base_info

    adapter = random_adapter(read_base_info(base_dir), r=4, alpha=8.0, targets=TARGETS, seed=seed, b_std=0.5)
    directory = root / name.replace("/", "_").replace("@", "_")
    return AdapterRef(name, directory, write_peft(directory, adapter), 4)


@pytest.fixture(scope="module")
def adapter_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("adapters")


@pytest.fixture(scope="module")
def adapters(base_dir: Path, adapter_root: Path) -> list[AdapterRef]:
    return [
        make_adapter(base_dir, adapter_root, "acme/a@r1", 1),
        make_adapter(base_dir, adapter_root, "acme/b@r1", 2),
    ]


@pytest.fixture(scope="module")
def spare(base_dir: Path, adapter_root: Path) -> list[AdapterRef]:
    return [make_adapter(base_dir, adapter_root, f"acme/s{i}@r1", 10 + i) for i in range(3)]
