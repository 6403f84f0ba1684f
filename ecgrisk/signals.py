"""Stopping cleanly on SIGINT and SIGTERM, and worker processes that never outlive their parent.

Every long-running command runs inside :func:`stop_on_signals`. The first SIGINT or SIGTERM
raises :class:`Interrupted` wherever the main thread is, as Ctrl-C raises ``KeyboardInterrupt``,
so the ``finally`` blocks and context managers on the way out stop worker processes and finish
partial files; the context then prints one line saying how to resume and exits with 128 + the
signal number (130 for SIGINT, 143 for SIGTERM). Code that an exception half-way would leave
inconsistent runs under :func:`deferred_signals` (a reader pool starting its workers does), so
the stop comes right after it. Python drops an exception raised where it cannot propagate (an
at-fork hook, a ``__del__``), so long loops also call :func:`raise_if_interrupted` once a step:
the stop then comes at the next step.

SIGKILL runs no cleanup at all, so every worker process starts with :func:`die_with_parent`
(reader pools through :func:`worker_pool`, DataLoaders through ``worker_init_fn``, DDP ranks
through :func:`stop_on_signals`): the kernel kills it when its parent dies, and a watchdog thread
does the same where that is unavailable.

``ECGRISK_TEST_PAUSE=<point>`` (with ``ECGRISK_TEST_PAUSE_MARKER=<file>``) makes
:func:`fault_point` ``<point>`` create the marker file and wait there (up to a minute), so
tests/test_kill_safety.py can kill a command during its final write; nothing else reads them.

Only the standard library is imported here: reader processes import this module.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

__all__ = ["Interrupted", "deferred_signals", "die_with_parent", "fault_point", "raise_if_interrupted",
           "reader_init", "set_resume_hint", "stop_on_signals", "stop_workers", "worker_pool"]

HANDLED = (signal.SIGINT, signal.SIGTERM)
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived.

    A BaseException, as ``KeyboardInterrupt`` is, so ``except Exception`` does not swallow it;
    not a ``KeyboardInterrupt``, which Lightning turns into ``sys.exit(1)`` and which would
    lose the signal's exit code.
    """

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _State:
    def __init__(self) -> None:
        self.depth = 0
        self.signum: int | None = None
        self.reported = False
        self.deferring = 0
        self.hints: list[tuple[str, str | Callable[[], str]]] = []  # (command, hint)


_state = _State()


def _handler(signum: int, frame) -> None:
    if _state.signum is not None:
        return  # already stopping: a second Ctrl-C must not break the cleanup half-way
    _state.signum = signum
    if not _state.deferring:
        raise Interrupted(signum)


@contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold back the :class:`Interrupted` of a SIGINT/SIGTERM that arrives in the body until the
    body is done, for code that an exception half-way leaves inconsistent."""
    _state.deferring += 1
    try:
        yield
    finally:
        _state.deferring -= 1
    if not _state.deferring:
        raise_if_interrupted()


def raise_if_interrupted() -> None:
    """Raise :class:`Interrupted` if a signal came and its exception never reached
    :func:`stop_on_signals` (it was raised, then dropped, inside an at-fork hook or a
    ``__del__``). Call it once per step of a long loop, never in cleanup code."""
    if _state.signum is not None and not _state.reported:
        raise Interrupted(_state.signum)


def set_resume_hint(hint: str | Callable[[], str], command: str | None = None) -> None:
    """Replace the innermost :func:`stop_on_signals` hint (and command name)."""
    if _state.hints:
        _state.hints[-1] = (command or _state.hints[-1][0], hint)


@contextmanager
def stop_on_signals(hint: str | Callable[[], str] = "rerun the command to start again",
                    command: str | None = None) -> Iterator[None]:
    """Run a command's body so that SIGINT/SIGTERM stop it cleanly with exit status 130/143.

    Parameters
    ----------
    hint : what to do to resume, printed as ``<command>: interrupted by SIGTERM; <hint>`` on
        stderr; a callable is asked when the signal comes, so it can say what exists by then.
    command : the name in that line; default the program name.

    Contexts nest: the outermost installs the handlers (main thread only) and restores them on
    the way out; the innermost hint is the one printed. In a DDP rank started by a launcher
    (``LOCAL_RANK`` > 0) the process also dies with its launcher.
    """
    outer = _state.depth == 0
    saved = {}
    if outer:
        _state.signum, _state.reported = None, False
        if threading.current_thread() is threading.main_thread():
            # a signal the command was started ignoring stays ignored, as Python itself does for
            # SIGINT: a shell script's background job must not stop on the Ctrl-C that its
            # terminal sends to the foreground command beside it
            saved = {s: signal.signal(s, _handler) for s in HANDLED
                     if signal.getsignal(s) is not signal.SIG_IGN}
        if _local_rank() > 0:
            die_with_parent()  # a rank whose launcher died would wait in a collective forever
    _state.depth += 1
    _state.hints.append((command or Path(sys.argv[0]).name or "ecgrisk", hint))
    try:
        yield
        if _state.signum is not None and not _state.reported:
            # the body swallowed the signal (uvicorn shuts down and returns, for one): the run
            # still stopped because it was asked to, and says so
            raise SystemExit(_report())
    except SystemExit:
        raise
    except BaseException as exc:
        if _state.signum is None or _state.reported:
            raise
        # frames of the interrupted code hold generators and pools; dropping them now stops
        # those workers here rather than at interpreter exit, after their queued work
        traceback.clear_frames(exc.__traceback__)
        raise SystemExit(_report()) from None
    finally:
        _state.depth -= 1
        _state.hints.pop()
        if outer:
            for s, h in saved.items():
                signal.signal(s, h)
            _state.signum = None


def _report() -> int:
    name, hint = _state.hints[-1]
    try:
        text = hint() if callable(hint) else hint
    except Exception as e:  # the hint must never hide the interruption itself
        text = f"(no resume hint: {type(e).__name__}: {e})"
    _state.reported = True
    signum = _state.signum
    if _local_rank() == 0:  # the other DDP ranks stop alike: one line says it for all
        print(f"{name}: interrupted by {signal.Signals(signum).name}; {text}", file=sys.stderr,
              flush=True)
    return 128 + signum


def _local_rank() -> int:
    try:
        return int(os.environ.get("LOCAL_RANK", "0") or 0)
    except ValueError:
        return 0


# --------------------------------------------------------------------------- worker processes


def _set_pdeathsig(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent: int, interval: float) -> None:
    while True:
        time.sleep(interval)
        if os.getppid() != parent:
            os._exit(1)


def die_with_parent(parent_pid: int | None = None, interval: float = 1.0) -> None:
    """End this process with SIGKILL when its parent process ends, however it ends.

    ``PR_SET_PDEATHSIG`` on Linux; a daemon thread comparing ``os.getppid()`` with
    ``parent_pid`` (default: the parent now) every ``interval`` seconds everywhere, for systems
    without it. A parent that died before this call is noticed at once.
    """
    parent = os.getppid() if parent_pid is None else parent_pid
    _set_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=_watch, args=(parent, interval), daemon=True,
                     name="ecgrisk-parent-watchdog").start()


def reader_init(parent_pid: int, worker_id: int | None = None) -> None:
    """Initializer of worker processes: die with ``parent_pid``; leave Ctrl-C to the parent
    (a terminal sends it to the whole process group, and the parent stops its workers); end
    quietly on SIGTERM (a forked worker inherits the parent's handler, which would raise
    :class:`Interrupted` inside the pool's machinery). ``worker_id`` is what a DataLoader
    passes its ``worker_init_fn``; unused."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent(parent_pid)


def stop_workers(executor: ProcessPoolExecutor, grace: float = 10.0) -> None:
    """Cancel what is queued and end the workers now.

    ``shutdown(wait=True)`` would first run every queued task (``Executor.map`` queues them
    all: minutes of work for a large batch). Cancelling lets each worker finish only the task
    in its hands and leave; one still busy after ``grace`` seconds is killed. Killing them all
    at once would be quicker but can cut a worker off half-way through sending a result, and
    the pool's manager thread then waits for the rest of it forever, holding up the exit.
    """
    procs = list((getattr(executor, "_processes", None) or {}).values())
    manager = getattr(executor, "_executor_manager_thread", None)
    executor.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + grace
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(5)
    if manager is not None and manager.ident is not None:
        # submit can fail while the pool starts this thread, before it ever ran (a signal did,
        # before submit deferred them)
        manager.join(5)


class _Pool(ProcessPoolExecutor):
    def submit(self, fn, /, *args, **kwargs):
        # submit starts worker processes: a signal between a worker's fork and the pool recording
        # it left a worker no one stops, which multiprocessing's exit then joins forever
        with deferred_signals():
            return super().submit(fn, *args, **kwargs)


def _pool_init(parent_pid: int, nice: int) -> None:
    reader_init(parent_pid)
    # SIGTERM to the whole process group (timeout, a service manager, a container stop) would
    # otherwise kill a worker half-way through sending a result larger than a pipe's buffer, and
    # the pool's manager thread would wait for the rest forever, holding up the exit; the parent
    # gets the same signal and stops its workers between results (stop_workers)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if nice and hasattr(os, "nice"):  # POSIX only
        os.nice(nice)


@contextmanager
def worker_pool(workers: int, mp_context=None, nice: int = 0) -> Iterator[ProcessPoolExecutor]:
    """A process pool whose workers die with this process and stop at once when the body
    raises (an interruption, an error, or a generator closed early). ``nice`` is added to the
    workers' niceness: they yield the cores to this process when both want them."""
    ex = _Pool(max_workers=workers, mp_context=mp_context, initializer=_pool_init,
               initargs=(os.getpid(), nice))
    try:
        yield ex
    except BaseException:
        stop_workers(ex)
        raise
    ex.shutdown(wait=True)


# --------------------------------------------------------------------------- fault injection


def fault_point(name: str) -> None:
    """Pause here when ``ECGRISK_TEST_PAUSE`` names this point (tests only; see module doc)."""
    if os.environ.get("ECGRISK_TEST_PAUSE") != name:
        return
    Path(os.environ["ECGRISK_TEST_PAUSE_MARKER"]).touch()
    time.sleep(60)
