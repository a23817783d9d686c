"""Text to image with any local diffusers pipeline folder (Stable Diffusion 1.x/2.x, SD-Turbo,
SDXL, Flux, ...), in the optional `images` extra (torch, diffusers, transformers, pillow).

The pipeline loads once, in the background at start (the server answers meanwhile; a request that
comes earlier waits for it), on CUDA when present, else the CPU (catalog `device` overrides).
Calls run one at a time in the engine's own thread: a pipeline call already uses every core (or
the GPU), and two at once would only fight over them. Each image of a request gets its own seed
(seed, seed + 1, ...), so the images differ and each can be made again. A request whose client
left stops at the next denoising step.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib.util
import inspect
import logging
import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from infergate.catalog import ModelSpec
from infergate.engines.base import GeneratedImage, ImageEngine, ImageRequest, ImageResult
from infergate.engines.image_common import encode_image, image_usage, quality_of, seeds_for
from infergate.errors import InvalidRequest, Unavailable
from infergate.schemas.images import CONTENT_TYPES


def _missing_extra(name: str) -> ImportError:
    return ImportError(
        f"{name} is not installed: image models need the images extra "
        "(`make serve EXTRAS=images`, or `pip install 'infergate[images]'`)"
    )


# Present or not is known at once (the registry reports a missing extra as the model's reason it
# cannot serve); importing them takes seconds, so that happens in the loading thread.
for _package in ("torch", "diffusers"):
    if importlib.util.find_spec(_package) is None:
        raise _missing_extra(_package)


log = logging.getLogger("infergate.images")


class SerialThread:
    """One daemon thread running submitted calls in order. Daemon: stopping the server never waits
    for a pipeline load or call still running (a ThreadPoolExecutor's threads are joined at exit)."""

    def __init__(self, name: str) -> None:
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        threading.Thread(target=self._loop, name=name, daemon=True).start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.queue.put((future, fn, args))
        return asyncio.wrap_future(future)  # cancelling it cancels a call not yet started

    def close(self) -> None:
        self.queue.put(None)

    def _loop(self) -> None:
        while (item := self.queue.get()) is not None:
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)


class _Cancelled(Exception):
    """Raised inside the pipeline (step callback) when the request was cancelled: nobody awaits
    the call any more, it only has to stop."""


_quiet_lock = threading.Lock()
_quiet_depth = 0
_quiet_saved: list[int] = []  # the libraries' levels before the first of the running loads


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """transformers and diffusers at error level during a load: every load otherwise prints
    "`CLIPImageProcessor` requires torchvision (not installed); falling back ...", a multi-line
    "install accelerate" advice and a "Loading weights" bar, none of which an operator can act on
    (the PIL processors and a plain load are what we want). Our own loggers are untouched. Counted,
    so concurrent loads restore the levels only when the last one ends."""
    global _quiet_depth
    import diffusers.utils.logging as diffusers_logging

    try:
        import transformers.utils.logging as transformers_logging
    except ImportError:  # a pipeline without transformers components
        transformers_logging = None
    libraries = [lib for lib in (diffusers_logging, transformers_logging) if lib is not None]
    with _quiet_lock:
        if _quiet_depth == 0:
            _quiet_saved[:] = [lib.get_verbosity() for lib in libraries]
            for lib in libraries:
                lib.set_verbosity_error()
            if transformers_logging is not None:
                transformers_logging.disable_progress_bar()
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                for lib, level in zip(libraries, _quiet_saved, strict=True):
                    lib.set_verbosity(level)


def load_pipeline(path: str, device: str | None, scheduler: str | None, threads: int | None = None) -> Any:
    """The pipeline of a local folder, on `device` (None: CUDA when present, else the CPU);
    nothing is downloaded (local_files_only)."""
    try:
        import diffusers
        import torch
    except ImportError as exc:
        raise _missing_extra(exc.name or "diffusers") from exc
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if threads:  # torch's CPU threads are per process: the catalog's `threads` sets them for all
        torch.set_num_threads(threads)
    dtype = torch.float16 if device == "cuda" else torch.float32
    diffusers.utils.logging.disable_progress_bar()  # no loading bars in the server's log
    with warnings.catch_warnings(), _quiet_libraries():
        # torch_dtype: renamed dtype in recent diffusers (a FutureWarning), the only name older ones know
        warnings.simplefilter("ignore", FutureWarning)
        # the class the folder names (light: AutoPipeline's lookup imports every pipeline family)
        pipe = diffusers.DiffusionPipeline.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
    if "Img2Img" in type(pipe).__name__ or "Inpaint" in type(pipe).__name__:
        pipe = diffusers.AutoPipelineForText2Image.from_pipe(pipe)  # the same weights, text to image
    if scheduler:
        if not hasattr(diffusers, scheduler):
            raise ValueError(f"diffusers has no scheduler {scheduler!r}")
        pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


class DiffusersImageEngine(ImageEngine):
    def __init__(self, spec: ModelSpec, data_dir: Path | None = None) -> None:
        super().__init__(spec, data_dir)
        self.device = spec.device or "cpu"  # until the load has looked for CUDA
        self._load: asyncio.Task[Any] | None = None
        # one thread: pipeline calls are serialized, queued requests wait their turn in order
        self._thread = SerialThread(f"diffusers-{spec.id}")
        self._params: frozenset[str] = frozenset()

    async def start(self) -> None:
        if not self.spec.path:
            raise ValueError("a diffusers model needs `path`: a pipeline folder (with model_index.json)")
        folder = Path(self.spec.path)
        if not (folder / "model_index.json").is_file():
            raise FileNotFoundError(f"not a diffusers pipeline folder (no model_index.json): {folder}")
        self._load = asyncio.create_task(self._load_in_thread())

    async def _load_in_thread(self) -> Any:
        try:
            pipe = await self._thread.submit(
                load_pipeline,
                str(self.spec.path),
                self.spec.device,
                self.spec.scheduler,
                self.spec.threads,
            )
        except Exception as exc:
            log.error("model %s: the pipeline failed to load: %s", self.spec.id, exc)
            raise
        self.device = str(pipe.device.type)
        self._params = frozenset(inspect.signature(pipe.__call__).parameters)
        return pipe

    def readiness(self) -> str | None:
        if self._load is None:
            return "not started"
        if self._load.done() and not self._load.cancelled() and self._load.exception() is not None:
            return f"pipeline failed to load: {self._load.exception()}"
        return None

    async def close(self) -> None:
        if self._load is not None and not self._load.done():
            self._load.cancel()  # the loading thread is a daemon: nothing waits for it
        self._thread.close()

    def check(self, request: ImageRequest) -> None:
        if request.background == "transparent":
            raise InvalidRequest(
                f"The model '{self.spec.id}' makes opaque images; background 'transparent' is not supported.",
                param="background",
                code="unsupported_background",
            )
        if request.output_format not in CONTENT_TYPES:
            raise InvalidRequest(
                f"output_format '{request.output_format}' is not supported", param="output_format"
            )

    async def generate(self, request: ImageRequest) -> ImageResult:
        self.check(request)
        assert self._load is not None, "engine not started"
        try:
            pipe = await asyncio.shield(self._load)  # a cancelled request must not cancel the load
        except Exception as exc:  # a request that came while it loaded, and the load failed
            raise Unavailable(
                f"The model '{self.spec.id}' cannot serve: pipeline failed to load: {exc}",
                code="model_unavailable",
            ) from None
        if request.negative_prompt and "negative_prompt" not in self._params:
            raise InvalidRequest(
                f"The model '{self.spec.id}' takes no negative_prompt.", param="negative_prompt"
            )
        seeds = seeds_for(request)
        cancel = threading.Event()
        work = self._thread.submit(self._run_and_encode, pipe, request, seeds, cancel)
        try:
            pictures, flagged, encoded, timings = await work
        except asyncio.CancelledError:
            cancel.set()  # a running call stops at its next step; a queued one never starts
            raise
        fmt = request.output_format
        images = [
            GeneratedImage(
                data=data,
                width=picture.width,
                height=picture.height,
                content_type=CONTENT_TYPES[fmt],
                seed=seed,
                nsfw=bool(flagged[i]) if flagged else False,
            )
            for i, (data, picture, seed) in enumerate(zip(encoded, pictures, seeds, strict=True))
        ]
        return ImageResult(
            images=images,
            usage=image_usage(request, len(images)),
            quality=quality_of(request.quality),
            background="opaque",
            output_format=fmt,
            timings=timings,
        )

    def _run_and_encode(
        self, pipe: Any, request: ImageRequest, seeds: list[int], cancel: threading.Event
    ) -> tuple[Any, Any, list[bytes], dict[str, float]]:
        """The pipeline call, then the encoding, in one trip to the engine's thread (each hop
        between threads costs milliseconds on a busy machine; encoding is ~1 % of a call)."""
        started = time.perf_counter()
        pictures, flagged = self._run(pipe, request, seeds, cancel)
        inferred = time.perf_counter()
        encoded = [encode_image(p, request.output_format, request.output_compression) for p in pictures]
        timings = {"inference": inferred - started, "encode": time.perf_counter() - inferred}
        return pictures, flagged, encoded, {k: round(v, 4) for k, v in timings.items()}

    def _run(self, pipe: Any, request: ImageRequest, seeds: list[int], cancel: threading.Event) -> Any:
        """One pipeline call for all the request's images (in the engine's thread)."""
        import torch

        if cancel.is_set():
            raise _Cancelled
        steps = request.steps or self.spec.steps
        guidance = request.guidance_scale if request.guidance_scale is not None else self.spec.guidance_scale
        kwargs: dict[str, Any] = {
            "prompt": request.prompt,
            "num_images_per_prompt": request.n,
            "width": request.width,
            "height": request.height,
            "generator": [torch.Generator(device=self.device).manual_seed(s) for s in seeds],
            "output_type": "pil",
        }
        if steps is not None:
            kwargs["num_inference_steps"] = steps
        if guidance is not None:
            kwargs["guidance_scale"] = guidance
        if request.negative_prompt:
            kwargs["negative_prompt"] = request.negative_prompt
        if "callback_on_step_end" in self._params:

            def on_step(
                _pipe: Any, _step: int, _timestep: Any, callback_kwargs: dict[str, Any]
            ) -> dict[str, Any]:
                if cancel.is_set():
                    raise _Cancelled
                return callback_kwargs

            kwargs["callback_on_step_end"] = on_step
        checker = getattr(pipe, "safety_checker", None)
        if checker is not None and not request.safety_checker:
            pipe.safety_checker = None  # this call only: calls are serialized on this thread
        try:
            with torch.inference_mode():
                out = pipe(**kwargs)
        finally:
            if checker is not None:
                pipe.safety_checker = checker
        return out.images, getattr(out, "nsfw_content_detected", None)
