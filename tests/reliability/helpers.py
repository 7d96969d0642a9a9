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
    peak_mb: float  # the process's peak resident memory (VmHWM at exit), MB; 0 if not recorded


# Peak memory of a child, read by the child itself: `os.wait4`'s ru_maxrss is no good here, as Linux
# starts a forked child's peak at its parent's resident size (a pytest process of 1.6 GB makes every
# child "peak" at 1.6 GB). A `sitecustomize` on the child's path records /proc/self/status's VmHWM
# (the peak of the program after exec) when it exits.
_SITE = """
import atexit, os
def _record_peak(path=os.environ.get("TFSIM_TEST_PEAK_FILE")):
    with open("/proc/self/status") as status, open(path, "w") as out:
        out.write(next(line for line in status if line.startswith("VmHWM")).split()[1])
if os.environ.get("TFSIM_TEST_PEAK_FILE"):
    atexit.register(_record_peak)
"""


def _site_dir() -> str:
    folder = Path(tempfile.gettempdir()) / f"tfsim-test-site-{os.getpid()}"
    if not (folder / "sitecustomize.py").is_file():
        folder.mkdir(exist_ok=True)
        (folder / "sitecustomize.py").write_text(_SITE)
    return str(folder)


def run(args: list[str], cwd=None, env: dict | None = None, timeout: float = 600) -> Result:
    """Runs `args` (a Python command) in a fresh process and returns its exit code, output and peak
    resident memory (recorded by the child at exit; 0 if it could not record it)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r", suffix=".peak") as peak:
        child_env = {**ENV, **(env or {})}
        child_env["PYTHONPATH"] = os.pathsep.join(p for p in (_site_dir(), child_env.get("PYTHONPATH")) if p)
        child_env["TFSIM_TEST_PEAK_FILE"] = peak.name
        proc = subprocess.Popen(args, cwd=cwd, env=child_env, stdout=out, stderr=err)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        out.seek(0)
        err.seek(0)
        recorded = peak.read().strip()
        return Result(proc.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace"),
                      int(recorded) / 1024 if recorded else 0.0)


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
