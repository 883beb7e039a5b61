"""A zygote: one process imports the heavy frameworks once, then forks a child per job.

Importing LlamaIndex, LangChain, chromadb and qdrant-client costs seconds per process; the crash
tests need hundreds of processes. The zygote is started once (``python safety_zygote.py
<modules>``); it imports the modules, checks that it runs a single thread (a fork copies only the
calling thread, so a lock held by any other thread would stay held in the child forever), and
then serves jobs read from stdin, one JSON line each:

    {"op": "start", "tag": 7, "target": "module:function", "kwargs": {...}, "env": {...},
     "cwd": "...", "log": "...", "out": "..."}      -> {"tag": 7, "pid": 1234}
    {"op": "threads", "tag": 8}                     -> {"tag": 8, "threads": 1}

and reports each child's end as it happens: ``{"exit": 1234, "status": 0 | 1 | -9}``. Jobs may
run side by side.

A job runs in a forked child: a real process, with its own pid and address space, so the
``SIGKILL`` a crash point sends is real (no cleanup, no atexit, no flush). The child sets its
environment (``NUDGE_RAG_KILL_AT``, ``NUDGE_RAG_FAULT_LOG``, ``NUDGE_RAG_HOME``), re-reads the crash
points from it, calls the function, writes its JSON result to ``out`` and leaves with
``os._exit``. ``nudge_rag`` itself is preloaded too (it is only numpy and the standard library at
import): the child reloads ``nudge_rag._faults`` so that the points armed in its environment apply.

:class:`Zygote` is the parent side, used by the tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

#: What every job may need; imported once, by the zygote.
HEAVY_MODULES = [
    "numpy",
    "faiss",
    "chromadb",
    "chromadb.api.rust",
    "chromadb.telemetry.product.posthog",
    "portalocker",
    "qdrant_client",
    "qdrant_client.local.qdrant_local",
    "llama_index.core",
    "llama_index.vector_stores.chroma",
    "llama_index.vector_stores.faiss",
    "llama_index.vector_stores.qdrant",
    "langchain_core.vectorstores",
    "langchain_chroma",
    "langchain_qdrant",
    "langchain_community.vectorstores",
    "sqlalchemy",
    "psycopg",
    "psycopg2",
    "asyncpg",
    "langchain_postgres",
    "llama_index.vector_stores.postgres",
    "nudge_rag",
    "nudge_rag.finetuner",
    "nudge_rag.stores._chroma",
    "nudge_rag.stores._qdrant",
    "nudge_rag.stores._faiss",
    "nudge_rag.stores._pgvector",
    "nudge_rag.stores._inmemory",
    "nudge_rag.testing",
    "nudge_rag.integrations.llamaindex",
    "nudge_rag.integrations.langchain",
    "safety_kit",
    "pg_replicas",
]

# One thread per library: a zygote must fork from a single-threaded process, and the crash tests
# run on 2 shared cores anyway.
SINGLE_THREAD_ENV = {
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "ANONYMIZED_TELEMETRY": "False",
}


# ---------------------------------------------------------------------------------------------
# The zygote process
# ---------------------------------------------------------------------------------------------
def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:  # pragma: no cover - no procfs: trust the threading module
        import threading

        return threading.active_count()


def _child(msg: dict[str, Any]) -> int:
    """Runs in the forked child; returns the exit code."""
    log = os.open(msg["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    try:
        for key, value in msg.get("env", {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = str(value)
        if msg.get("cwd"):
            os.chdir(msg["cwd"])
        import importlib

        faults = sys.modules.get("nudge_rag._faults")
        if faults is not None:
            # Crash points read NUDGE_RAG_KILL_AT / NUDGE_RAG_FAULT_LOG when the module is
            # executed: execute it again in this child's environment (functions imported from it
            # elsewhere share its globals, so they see the new values).
            importlib.reload(faults)
        mod_name, _, fn_name = msg["target"].partition(":")
        fn = getattr(importlib.import_module(mod_name), fn_name)
        result = fn(**msg.get("kwargs", {}))
        out = msg.get("out")
        if out:
            tmp = out + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(result, f)
            os.replace(tmp, out)
        return 0
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass


def serve(modules: list[str]) -> None:
    import importlib
    import warnings

    sys.path[:0] = [str(HERE), str(HERE.parent)]  # safety_kit, and live_servers it imports
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in modules:
            importlib.import_module(name)
        warm = getattr(sys.modules.get("safety_kit"), "warm", None)
        if warm is not None:
            warm()
    out_fd, in_fd = sys.stdout.fileno(), sys.stdin.fileno()

    def send(msg: dict[str, Any]) -> None:
        data = (json.dumps(msg) + "\n").encode()
        while data:
            data = data[os.write(out_fd, data) :]

    # A child's exit wakes the loop through a pipe (SIGCHLD -> set_wakeup_fd), so that jobs run
    # side by side and each exit is reported the moment it happens.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    send({"ready": True, "threads": _threads(), "pid": os.getpid()})
    buf = b""
    running: set[int] = set()
    while True:
        try:
            ready, _, _ = select.select([in_fd, wake_r], [], [])
        except InterruptedError:  # pragma: no cover - select is retried by Python (PEP 475)
            continue
        if wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(wake_r, 512):
                    pass
        while running:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            running.discard(pid)
            send({"exit": pid, "status": os.waitstatus_to_exitcode(status)})
        if in_fd not in ready:
            continue
        chunk = os.read(in_fd, 65536)
        if not chunk:  # the parent is gone
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            msg = json.loads(line)
            if msg["op"] == "start":
                pid = os.fork()
                if pid == 0:
                    code = 1
                    try:
                        signal.set_wakeup_fd(-1)
                        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                        os.close(wake_r)
                        os.close(wake_w)
                        code = _child(msg)
                    finally:
                        os._exit(code)
                running.add(pid)
                send({"tag": msg["tag"], "pid": pid})
            elif msg["op"] == "threads":
                send({"tag": msg["tag"], "threads": _threads()})
            else:
                send({"tag": msg.get("tag"), "error": f"unknown op {msg['op']!r}"})


# ---------------------------------------------------------------------------------------------
# The parent side
# ---------------------------------------------------------------------------------------------
class ZygoteError(RuntimeError):
    pass


class Zygote:
    """Start the zygote; run jobs in children forked from it (several at once if wanted: the
    methods are thread-safe).

    Args:
        log_dir: Where each job's stdout/stderr go (one file per job).
        modules: What the zygote imports before forking.
        hang_limit: Seconds after which a job that never ends is killed and reported (a guard
            against a deadlocked child hanging the test run, never part of what is asserted).
    """

    def __init__(
        self, log_dir: Path, modules: list[str] | None = None, *, hang_limit: float = 300.0
    ) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.hang_limit = hang_limit
        self._n = 0  # request tags
        self._jobs = 0  # job log names
        self._lock = threading.Lock()  # writes to the zygote, job numbers
        self._cond = threading.Condition()
        self._replies: dict[int, dict[str, Any]] = {}
        self._exits: dict[int, int] = {}
        self._eof = False
        env = {**os.environ, **SINGLE_THREAD_ENV}
        env.pop("NUDGE_RAG_KILL_AT", None)
        env.pop("NUDGE_RAG_FAULT_LOG", None)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(HERE), str(HERE.parent), str(REPO), *filter(None, [env.get("PYTHONPATH")])]
        )
        self._stderr = open(self.log_dir / "zygote.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__)), *(modules or HEAVY_MODULES)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=str(REPO),
            env=env,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 600.0)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            self.close()
            tail = (self.log_dir / "zygote.log").read_text(errors="replace")[-3000:]
            raise ZygoteError(f"the zygote did not start:\n{tail}")
        hello = json.loads(line)
        self.threads = int(hello["threads"])
        if self.threads != 1:
            self.close()
            raise ZygoteError(
                f"the zygote runs {self.threads} threads after its imports; forking it would copy "
                "locks held by the others"
            )
        self._reader = threading.Thread(target=self._read_loop, name="zygote-reader", daemon=True)
        self._reader.start()

    def _read_loop(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            msg = json.loads(line)
            with self._cond:
                if "exit" in msg:
                    self._exits[int(msg["exit"])] = int(msg["status"])
                else:
                    self._replies[int(msg["tag"])] = msg
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _request(self, msg: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self._n += 1
            tag = self._n
            assert self.proc.stdin is not None
            self.proc.stdin.write((json.dumps({**msg, "tag": tag}) + "\n").encode())
            self.proc.stdin.flush()
        with self._cond:
            if not self._cond.wait_for(lambda: tag in self._replies or self._eof, 120.0):
                raise ZygoteError("the zygote gave no answer within 120 s")
            if tag not in self._replies:
                raise ZygoteError(self._gone())
            return self._replies.pop(tag)

    def _gone(self) -> str:
        tail = (self.log_dir / "zygote.log").read_text(errors="replace")[-3000:]
        return f"the zygote exited:\n{tail}"

    def start(
        self,
        target: str,
        kwargs: dict[str, Any] | None = None,
        *,
        env: dict[str, str | None] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        name: str = "job",
    ) -> Job:
        """Fork a child that runs ``target(**kwargs)``; it runs while the caller goes on."""
        with self._lock:
            self._jobs += 1
            stem = self.log_dir / f"{self._jobs:05d}-{name}"
        job = Job(self, 0, Path(f"{stem}.log"), Path(f"{stem}.json"), target)
        reply = self._request(
            {
                "op": "start",
                "target": target,
                "kwargs": kwargs or {},
                "env": env or {},
                "cwd": str(cwd) if cwd else None,
                "log": str(job.log),
                "out": str(job.out),
            }
        )
        job.pid = int(reply["pid"])
        return job

    def run(self, target: str, kwargs: dict[str, Any] | None = None, **kw: Any) -> JobResult:
        """Run ``target(**kwargs)`` in a child and wait for it."""
        return self.start(target, kwargs, **kw).wait()

    def threads_now(self) -> int:
        return int(self._request({"op": "threads"})["threads"])

    def _wait(self, pid: int) -> int:
        with self._cond:
            if not self._cond.wait_for(lambda: pid in self._exits or self._eof, self.hang_limit):
                raise TimeoutError
            if pid not in self._exits:
                raise ZygoteError(self._gone())
            return self._exits.pop(pid)

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


class JobResult:
    def __init__(self, job: Job, status: int) -> None:
        self.job = job
        self.status = status  # 0 done, 1 raised, -9 killed by SIGKILL
        self.value: Any = None
        if status == 0 and job.out.exists():
            self.value = json.loads(job.out.read_text())

    @property
    def killed(self) -> bool:
        return self.status == -signal.SIGKILL

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.job.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def check(self) -> Any:
        """The job's value; ZygoteError with its log if it did not end normally."""
        if self.status != 0:
            raise ZygoteError(
                f"job {self.job.target} (pid {self.job.pid}) ended with status {self.status}:\n"
                + self.log_tail()
            )
        return self.value


class Job:
    def __init__(self, zygote: Zygote, pid: int, log: Path, out: Path, target: str) -> None:
        self.zygote = zygote
        self.pid = pid
        self.log = log
        self.out = out
        self.target = target

    def wait(self) -> JobResult:
        try:
            status = self.zygote._wait(self.pid)
        except TimeoutError:
            # The child hangs: kill it (it is ours), and fail loudly.
            os.kill(self.pid, signal.SIGKILL)
            self.zygote._wait(self.pid)
            tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            msg = f"job {self.target} (pid {self.pid}) did not end within {self.zygote.hang_limit:.0f} s"
            raise ZygoteError(f"{msg}:\n{tail}") from None
        return JobResult(self, status)


if __name__ == "__main__":
    for k, v in SINGLE_THREAD_ENV.items():
        os.environ.setdefault(k, v)
    serve(sys.argv[1:])
