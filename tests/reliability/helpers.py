"""What the reliability tests share: run a real command in a fresh process and read back its exit
code, its output and its peak memory; check that an error is one clean line; make a small export.

Every test under tests/reliability/ treats a file, request or config as hostile and asserts what
the user sees (exit code, one line, no traceback), what the machine paid (memory) and that
nothing was lost or written elsewhere.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}


@dataclasses.dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    peak_mb: float  # the process's peak resident memory (ru_maxrss), MB


def run(args: list[str], cwd=None, env: dict | None = None, timeout: float = 600) -> Result:
    """Runs `args` in a fresh process and returns its exit code, output and peak memory (from
    `os.wait4`'s resource usage of that one child, not of earlier ones)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(args, cwd=cwd, env={**ENV, **(env or {})}, stdout=out, stderr=err)
        try:
            _, status, usage = _wait4(proc.pid, timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            os.waitpid(proc.pid, 0)
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Result(proc.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace"),
                      usage.ru_maxrss / 1024)


def _wait4(pid: int, timeout: float):
    import time
    deadline = time.monotonic() + timeout
    while True:
        got, status, usage = os.wait4(pid, os.WNOHANG)
        if got:
            return got, status, usage
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(str(pid), timeout)
        time.sleep(0.05)


def cli(module: str, *args, cwd=None, env: dict | None = None, timeout: float = 600) -> Result:
    """`python -m tfsim.pipelines.<module> args...` in a fresh process."""
    return run([sys.executable, "-m", f"tfsim.pipelines.{module}", *map(str, args)], cwd, env, timeout)


def python(script: str, *args, cwd=None, env: dict | None = None, timeout: float = 600) -> Result:
    """`python -c script args...` in a fresh process."""
    return run([sys.executable, "-c", script, *map(str, args)], cwd, env, timeout)


def assert_clean_error(result: Result, code: int, *fragments: str) -> str:
    """The command failed with `code`, no traceback, and its last stderr line (the `error: ...`
    line) contains every fragment; returns that line."""
    assert result.returncode == code, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def tiny_export(root: Path, name: str = "m", seed: int = 0, image_size: int = 16, head: str = "embedding",
                max_pixels: int | None = None, **metadata) -> Path:
    """An untrained small ResNet exported as `<root>/<name>/1` (a second or two)."""
    from tfsim.export import export_embedder
    from tfsim.models import build_embedding_model

    kwargs = {"head": head, "code_bits": 16} if head == "hash" else {}
    model = build_embedding_model("small_resnet", image_size, 8 if head != "hash" else 16, width=4,
                                  blocks_per_stage=1, seed=seed, **kwargs)
    return export_embedder(model, root, name, image_size, metadata={"similarity": "cosine", **metadata},
                           binary_codes=head == "hash", **({"max_pixels": max_pixels} if max_pixels else {}))


def tree_snapshot(root: Path) -> dict:
    """{relative path: size} of every file under `root` (to assert nothing changed or appeared)."""
    root = Path(root)
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}
