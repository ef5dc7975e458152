"""The light install has no torch: the face (CLI, HTTP API) must import, `mint up --no-serve` must serve
and stop, and `mint replay verify` must run, in a process where torch cannot be found (issue 12)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

pytestmark = pytest.mark.anyio

# Loaded at interpreter start (PYTHONPATH): the path finder no longer finds torch, so `import torch`
# fails and importlib.util.find_spec("torch") is None, exactly as on an install without it.
WITHOUT_TORCH = """
import sys
from importlib.machinery import PathFinder


class WithoutTorch(PathFinder):
    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname == "torch" or fullname.startswith("torch."):
            return None
        return super().find_spec(fullname, path, target)


sys.meta_path[:] = [WithoutTorch if f is PathFinder else f for f in sys.meta_path]
"""
MINT = str(Path(sys.executable).parent / "mint")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "without-torch"
    site.mkdir()
    (site / "sitecustomize.py").write_text(WITHOUT_TORCH)
    return {**os.environ, "PYTHONPATH": str(site), "PYTHONUNBUFFERED": "1"}


def test_torch_cannot_be_imported_there(env: dict[str, str]) -> None:
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"
    assert subprocess.run([sys.executable, "-c", probe], env=env, timeout=60).returncode == 0
    blocked = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, timeout=60)
    assert b"No module named 'torch'" in blocked.stderr


def test_the_face_imports_without_torch(env: dict[str, str]) -> None:
    face = "import mint.cli, mint.api.app, mint.api.openai, mint.serving.engine, mint.commands.up"
    done = subprocess.run([sys.executable, "-c", face], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


async def test_mint_up_no_serve_and_replay_verify_run_without_torch(
    env: dict[str, str], tmp_path: Path
) -> None:
    home = str(tmp_path / "home")
    process = await anyio.open_process(
        [MINT, "up", "--home", home, "--port", "0", "--no-serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    seen: list[str] = []
    try:
        assert process.stdout is not None
        output = BufferedByteReceiveStream(process.stdout)
        with anyio.fail_after(120):
            while not (line := (await output.receive_until(b"\n", 1 << 20)).decode()).startswith(
                "HTTP API on"
            ):
                seen.append(line)
        async with httpx.AsyncClient(base_url=line.split()[3]) as client:
            health = await client.get("/healthz")
        assert health.json() == {"status": "ok", "engines": 0}
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(60):
            assert await process.wait() == 0, "\n".join(seen)
    except anyio.IncompleteRead:
        raise AssertionError("mint up ended early:\n" + "\n".join(seen)) from None
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    with anyio.fail_after(120):
        verify = await anyio.run_process([MINT, "replay", "verify", "--home", home], env=env, check=False)
    said = (verify.stdout + verify.stderr).decode()
    assert verify.returncode == 0 and "replay equals live" in said, said


def test_no_serve_refuses_a_base_to_serve(env: dict[str, str], tmp_path: Path) -> None:
    both = [MINT, "up", "--home", str(tmp_path), "--no-serve", "--serve", "tiny"]
    done = subprocess.run(both, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--no-serve starts no engine" in done.stderr
