"""OnDemandWorker: the thread life of a local model, apart from what the thread does.

The worker thread exists only while there is work: after IDLE_WORKER_EXIT seconds without any it
ends, and the next request starts a new one. That is not thrift but speed: llama.cpp (built with
OpenMP, as the wheel is) gives every thread that calls `llama_decode` its own OpenMP thread team,
and as soon as the teams outnumber the cores libgomp throttles its spin-waits, so every model in
the process decodes ~40% slower (measured 166 -> 100 tok/s on 2 cores with a second, idle model).

`idle_unload` frees the weights after that many idle seconds, by the worker while it still waits,
or by a timer once it has ended. Subclasses provide the work (`_take_work` under the lock, then
`_do_work` without it), loading, unloading and shutdown.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

log = logging.getLogger("infergate.engines.llama.engine")

IDLE_WORKER_EXIT = 1.0  # seconds without work before the worker thread ends


class OnDemandWorker:
    def __init__(self, name: str, idle_unload: float | None) -> None:
        self.name = name
        self.idle_unload = idle_unload
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._worker_alive = False  # a worker thread runs (or is about to); guarded by _cond
        self._unload_timer: threading.Timer | None = None
        self._last_used = time.monotonic()
        self.closed = False
        self.first_load = threading.Event()  # set once the start-up load attempt has ended

    # ---- hooks ----------------------------------------------------------------------------

    def _has_work(self) -> bool:  # lock held
        raise NotImplementedError

    def _take_work(self) -> Any:  # lock held: what the next `_do_work` call serves
        raise NotImplementedError

    def _do_work(self, work: Any) -> None:  # lock not held: one step
        raise NotImplementedError

    def _load(self) -> None:
        raise NotImplementedError

    def _is_loaded(self) -> bool:
        raise NotImplementedError

    def _unload(self) -> None:  # lock held, no worker running
        raise NotImplementedError

    def _shutdown(self) -> None:  # fail what is left, free everything
        raise NotImplementedError

    def _crashed(self, error: BaseException) -> None:  # fail what is left
        raise NotImplementedError

    # ---- control ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start a worker, which loads the model (see `first_load`)."""
        with self._cond:
            self._wake()

    def _wake(self) -> None:
        """Caller holds the lock: make sure a worker runs and sees the news."""
        if not self._worker_alive and not self._closing:
            self._worker_alive = True
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closing = True
            if self._unload_timer is not None:
                self._unload_timer.cancel()
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join()
        if not self.closed:  # the worker had ended while idle: shut down from here
            self._shutdown()
        self.closed = True

    # ---- the worker thread ------------------------------------------------------------------

    def _run(self) -> None:
        if not self.first_load.is_set():
            with contextlib.suppress(Exception):  # reported by readiness; retried on the next request
                self._load()
            self.first_load.set()
        try:
            if self._loop():
                self._shutdown()
                self.closed = True
        except BaseException as exc:  # a bug here must not leave requests waiting forever
            log.exception("%s: worker failed", self.name)
            self._crashed(exc)
            with self._cond:
                self._worker_alive = False

    def _loop(self) -> bool:
        """Serve until closing (True) or idle for IDLE_WORKER_EXIT seconds (False: thread ends)."""
        while True:
            with self._cond:
                idle_since = time.monotonic()
                while not self._closing and not self._has_work():
                    now = time.monotonic()
                    exit_in = IDLE_WORKER_EXIT - (now - idle_since)
                    unload_in = self._unload_in(now)
                    if unload_in is not None and unload_in <= 0:
                        self._unload_now()
                        continue
                    if exit_in <= 0:
                        self._worker_alive = False  # from here on, `_wake` starts a new worker
                        self._arm_unload_timer()
                        return False
                    self._cond.wait(exit_in if unload_in is None else min(exit_in, unload_in))
                if self._closing:
                    return True
                work = self._take_work()
            self._last_used = time.monotonic()
            self._do_work(work)

    # ---- idle unload ------------------------------------------------------------------------

    def _unload_in(self, now: float) -> float | None:
        if self.idle_unload is None or not self._is_loaded():
            return None
        return self.idle_unload - (now - self._last_used)

    def _arm_unload_timer(self) -> None:
        """Caller holds the lock: unload after `idle_unload` though no worker thread waits for it."""
        if self._unload_timer is not None:
            self._unload_timer.cancel()
        delay = self._unload_in(time.monotonic())
        if delay is None:
            return
        self._unload_timer = threading.Timer(max(delay, 0.0), self._unload_if_idle)
        self._unload_timer.daemon = True
        self._unload_timer.start()

    def _unload_if_idle(self) -> None:
        with self._cond:  # no worker can start while the lock is held, so the model is ours
            if not self._closing and not self._worker_alive and not self._has_work():
                unload_in = self._unload_in(time.monotonic())
                if unload_in is not None and unload_in <= 0:
                    self._unload_now()

    def _unload_now(self) -> None:
        log.info("unloading %s after %.0f s idle", self.name, self.idle_unload or 0)
        self._unload()
