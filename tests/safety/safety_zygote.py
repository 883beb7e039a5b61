"""A zygote: one process imports the heavy frameworks once, then forks a child per job.

Importing LlamaIndex, LangChain, chromadb and qdrant-client costs seconds per process; the crash
tests need hundreds of processes. The zygote is started once (``python safety_zygote.py
<modules>``); it imports the modules, checks that it runs a single thread (a fork copies only the
calling thread, so a lock held by any other thread would stay held in the child forever), and
then serves jobs read from stdin, one JSON line each:

    {"op": "start", "target": "module:function", "kwargs": {...}, "env": {...}, "cwd": "...",
     "log": "...", "out": "..."}        -> {"pid": 1234}
    {"op": "wait", "pid": 1234}         -> {"pid": 1234, "status": 0 | 1 | -9}

A job runs in a forked child: a real process, with its own pid and address space, so the
``SIGKILL`` a crash point sends is real (no cleanup, no atexit, no flush). The child sets its
environment (``NUDGE_RAG_KILL_AT``, ``NUDGE_RAG_FAULT_LOG``, ``NUDGE_RAG_HOME``), re-reads the crash
points from it, calls the function, writes its JSON result to ``out`` and leaves with
``os._exit``. ``nudge_rag`` itself is preloaded too (it is only numpy and the standard library at
import): the child reloads ``nudge_rag._faults`` so that the points armed in its environment apply.

:class:`Zygote` is the parent side, used by the tests.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
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
    "nudge_rag",
    "nudge_rag.finetuner",
    "nudge_rag.stores._chroma",
    "nudge_rag.stores._qdrant",
    "nudge_rag.stores._faiss",
    "nudge_rag.stores._inmemory",
    "nudge_rag.testing",
    "nudge_rag.integrations.llamaindex",
    "nudge_rag.integrations.langchain",
    "safety_kit",
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

    sys.path.insert(0, str(HERE))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in modules:
            importlib.import_module(name)
        warm = getattr(sys.modules.get("safety_kit"), "warm", None)
        if warm is not None:
            warm()
    proto_out = sys.stdout
    ready = {"ready": True, "threads": _threads(), "pid": os.getpid()}
    proto_out.write(json.dumps(ready) + "\n")
    proto_out.flush()
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["op"] == "start":
            proto_out.flush()
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    code = _child(msg)
                finally:
                    os._exit(code)
            reply: dict[str, Any] = {"pid": pid}
        elif msg["op"] == "wait":
            _, status = os.waitpid(msg["pid"], 0)
            reply = {"pid": msg["pid"], "status": os.waitstatus_to_exitcode(status)}
        elif msg["op"] == "threads":
            reply = {"threads": _threads()}
        else:
            reply = {"error": f"unknown op {msg['op']!r}"}
        proto_out.write(json.dumps(reply) + "\n")
        proto_out.flush()


# ---------------------------------------------------------------------------------------------
# The parent side
# ---------------------------------------------------------------------------------------------
class ZygoteError(RuntimeError):
    pass


class Zygote:
    """Start the zygote; run jobs in children forked from it.

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
        self._n = 0
        env = {**os.environ, **SINGLE_THREAD_ENV}
        env.pop("NUDGE_RAG_KILL_AT", None)
        env.pop("NUDGE_RAG_FAULT_LOG", None)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(HERE), str(REPO), *filter(None, [env.get("PYTHONPATH")])]
        )
        self._stderr = open(self.log_dir / "zygote.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__)), *(modules or HEAVY_MODULES)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=str(REPO),
            env=env,
            text=True,
            bufsize=1,
        )
        ready = self._read(timeout=600.0)
        if not ready.get("ready"):
            raise ZygoteError(f"zygote did not start: {ready}")
        self.threads = int(ready["threads"])
        if self.threads != 1:
            raise ZygoteError(
                f"the zygote runs {self.threads} threads after its imports; forking it would copy "
                "locks held by the others"
            )

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise ZygoteError(f"the zygote gave no answer within {timeout:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            tail = (self.log_dir / "zygote.log").read_text(errors="replace")[-3000:]
            raise ZygoteError(f"the zygote exited:\n{tail}")
        return json.loads(line)

    def _send(self, msg: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        return self._read(timeout=120.0)

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
        self._n += 1
        stem = self.log_dir / f"{self._n:04d}-{name}"
        job = Job(self, 0, Path(f"{stem}.log"), Path(f"{stem}.json"), target)
        reply = self._send(
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
        return int(self._send({"op": "threads"})["threads"])

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
        z = self.zygote
        assert z.proc.stdin is not None
        z.proc.stdin.write(json.dumps({"op": "wait", "pid": self.pid}) + "\n")
        z.proc.stdin.flush()
        try:
            reply = z._read(timeout=z.hang_limit)
        except ZygoteError:
            # The child hangs: kill it (it is ours) so that the zygote answers, and fail loudly.
            os.kill(self.pid, signal.SIGKILL)
            z._read(timeout=60.0)
            tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise ZygoteError(
                f"job {self.target} (pid {self.pid}) did not end within {z.hang_limit:.0f} s:\n{tail}"
            ) from None
        return JobResult(self, int(reply["status"]))


if __name__ == "__main__":
    for k, v in SINGLE_THREAD_ENV.items():
        os.environ.setdefault(k, v)
    t0 = time.perf_counter()
    serve(sys.argv[1:])
