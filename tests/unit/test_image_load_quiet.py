"""Loading a diffusers pipeline prints none of the libraries' load-time noise (transformers'
"requires torchvision" fallbacks, diffusers' "install accelerate" advice, a weights progress bar)
and leaves their log levels as they were. The load runs in a fresh process, as in the server:
transformers warns about torchvision once per process, on the first lookup."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.tiny_diffusers import build_tiny_pipeline

LOAD = """
import logging, sys
import diffusers.utils.logging as d
import transformers.utils.logging as t
from infergate.engines.diffusers_image import load_pipeline
logging.basicConfig(level=logging.INFO)
before = (t.get_verbosity(), d.get_verbosity())
load_pipeline(sys.argv[1], "cpu", None)
assert (t.get_verbosity(), d.get_verbosity()) == before, ((t.get_verbosity(), d.get_verbosity()), before)
logging.getLogger("infergate.images").warning("our own warning still shows")
print("loaded")
"""


def test_a_pipeline_load_prints_no_library_noise(tmp_path: Path) -> None:
    folder = build_tiny_pipeline(tmp_path / "tiny-sd")
    done = subprocess.run(
        [sys.executable, "-c", LOAD, str(folder)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "loaded"
    for noise in ("requires torchvision", "accelerate", "Loading weights"):
        assert noise not in done.stderr, done.stderr
    assert "our own warning still shows" in done.stderr
