"""Test-only job kinds, loaded by servers and workers started with
`INFERGATE_JOB_HANDLERS=tests.support.job_kinds` (never in production).

- `test.slow`: writes `started-<pid>-<attempt>` into `payload["dir"]`, then waits until a
  `release` file appears there; the output names the process that finished it. A cancelled run
  leaves `cancelled-<pid>`. Tests kill workers while it waits (no fixed sleeps in the tests).
- speech held on request: an async-invoke tts job whose text starts with `HOLD <dir>` waits the
  same way before the real synthesis runs, so a running job can be cancelled or killed at will.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from infergate.jobs.invoke import INVOKE_KINDS, register_invoke_kind
from infergate.jobs.queue import Job
from infergate.jobs.worker import register_handler


async def _hold(folder: Path, attempt: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"started-{os.getpid()}-{attempt}").write_text(str(os.getpid()))
    try:
        while not (folder / "release").exists():
            await asyncio.sleep(0.02)
    except asyncio.CancelledError:
        (folder / f"cancelled-{os.getpid()}").write_text("cancelled")
        raise


async def slow(job: Job, _platform: Any) -> dict[str, Any]:
    await _hold(Path(job.payload["dir"]), job.attempts)
    return {"pid": os.getpid(), "attempts": job.attempts}


register_handler("test.slow", slow)

_speech = INVOKE_KINDS["tts"]


async def held_speech(job: Job, spec: Any, engine: Any, params: Any, platform: Any) -> Any:
    if params.text.startswith("HOLD "):
        await _hold(Path(params.text.split()[1]), job.attempts)
    return await _speech.run(job, spec, engine, params, platform)


register_invoke_kind("tts", _speech.engine_type, _speech.parse, held_speech)
