"""Fault injection on PostgreSQL + pgvector with the state in PostgreSQL (issue 19): kill -9 at
seeded crash points of a first fine-tune, a second one and a revert, then a fresh process with a
fresh ``NUDGE_RAG_HOME`` (nothing on any disk) recovers, and every record must be exactly as it
was before the first fine-tune: ids, vectors bit for bit, texts and metadata.

The machinery is test_crash.py's (dry run with the fault log, seeded schedule, revert or redo
after each kill); what differs is where things live. The store and its state are rows of one
database, so a stage is a copy of the store's vectors and of the state's rows in tables of the
test's own, put back in one transaction; and every job runs with a home of its own that no
other job sees. Among the points: ``state.put``, a kill with a state transaction open (the
server rolls it back when the connection dies), and kills with the advisory lock held (the
server frees it with the dead session; the next job's ``lock_timeout`` is a guard for that
moment, not a wait anything depends on).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pg_replicas as R
import pytest
import safety_kit as K
import test_crash as C
from safety_zygote import JobResult, Zygote

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

N_KILLS = 24
QUERIES = {"q1": (0, 24), "q2": (12, 36)}  # records 12-23 in both
LOCK_GUARD = 60.0


class PgCrashRig(C.CrashRig):
    """test_crash's rig over a pgvector store: the jobs are pg_replicas', a stage lives in the
    database, and every job gets a fresh home."""

    def __init__(self, zygote: Zygote, framework: str, base: Path, socket_dir: str) -> None:
        from store_cases import table_name

        super().__init__(zygote, f"pg-{framework}", base)
        self.framework = framework
        self.urls = R.urls_for(socket_dir)
        self.name = table_name(framework[:2])
        self._homes = 0

    def run(self, target: str, kwargs: dict[str, Any], *, name: str, **env: str) -> JobResult:
        self._homes += 1
        home = self.base / "homes" / f"{self._homes:04d}"  # nothing a job leaves is seen again
        envs: dict[str, str | None] = {
            "NUDGE_RAG_HOME": str(home),
            "NUDGE_RAG_KILL_AT": None,
            "NUDGE_RAG_FAULT_LOG": None,
            **env,
        }
        args: dict[str, Any] = {"framework": self.framework, "urls": self.urls, "name": self.name}
        batch = {"write_batch_size": kwargs.get("write_batch_size", C.BATCH)}
        if target == "job_finetune":
            lo, hi = QUERIES[kwargs["queries_name"]]
            args.update(lo=lo, hi=hi, lock_timeout=LOCK_GUARD, **batch)
        elif target == "job_revert":
            args.update(lock_timeout=LOCK_GUARD, **batch)
        elif target == "job_snapshot":
            args["out"] = kwargs["out"]
        elif target != "job_build":
            raise ValueError(target)
        return self.z.run(f"pg_replicas:{target}", args, env=envs, cwd=self.cwd, name=name)

    # -- stages in the database ------------------------------------------------------------------

    def _where(self) -> tuple[Any, Any, Any]:
        """(engine, the store's table, our state backend) as the parent sees them."""
        from sqlalchemy import create_engine

        from nudge_rag.stores import adapter_for

        engine = create_engine(self.urls["psycopg"])
        with R.opened(self.framework, self.urls, self.name) as vs:
            ad = adapter_for(vs)
            table, scope = ad._t, ad.state_backend(ad.identity().key).scope
        from nudge_rag.state._postgres import PostgresBackend
        from nudge_rag.stores._pgvector import sync_sql

        return engine, table, PostgresBackend(sync_sql(engine), table.schema, scope)

    def _sql(self, steps: list[tuple[str, dict[str, Any]]]) -> None:
        from sqlalchemy import text

        engine, _, _ = self._cached()
        with engine.begin() as conn:
            for sql, params in steps:
                conn.execute(text(sql), params)

    _cache: tuple[Any, Any, Any] | None = None

    def _cached(self) -> tuple[Any, Any, Any]:
        if self._cache is None:
            self._cache = self._where()
        return self._cache

    def _stage_names(self, k: int) -> tuple[str, str]:
        return f"{self.name}_stage{k}_vec", f"{self.name}_stage{k}_state"

    def save_stage(self, k: int) -> None:
        _, t, be = self._cached()
        be.create_table()
        vec, st = self._stage_names(k)
        scope = f" WHERE {t.scope[0]} = CAST(:c AS uuid)" if t.scope else ""
        params = {"c": t.scope[1]} if t.scope else {}
        self._sql(
            [
                (
                    f'CREATE TABLE "{vec}" AS SELECT "{t.key_col}" AS k, "{t.vector_col}" AS v '
                    f'FROM "{t.schema}"."{t.table}"{scope}',
                    params,
                ),
                (
                    f'CREATE TABLE "{st}" AS SELECT key, data FROM {be.table} WHERE scope = :s',
                    {"s": be.scope},
                ),
            ]
        )

    def restore_stage(self, k: int) -> None:
        _, t, be = self._cached()
        vec, st = self._stage_names(k)
        self._sql(
            [
                (
                    f'UPDATE "{t.schema}"."{t.table}" AS t SET "{t.vector_col}" = s.v '
                    f'FROM "{vec}" AS s WHERE t."{t.key_col}" = s.k',
                    {},
                ),
                (f"DELETE FROM {be.table} WHERE scope = :s", {"s": be.scope}),
                (
                    f'INSERT INTO {be.table} (scope, key, data) SELECT :s, key, data FROM "{st}"',
                    {"s": be.scope},
                ),
            ]
        )
        for p in self.cwd.iterdir():
            p.unlink()

    def close(self) -> None:
        if self._cache is not None:
            self._cache[0].dispose()


def _suite(zygote: Zygote, framework: str, base: Path, socket_dir: str, n: int) -> list[C.Trial]:
    t0 = time.perf_counter()
    rigs = [PgCrashRig(zygote, framework, base / f"lane{i}", socket_dir) for i in range(C.LANES)]
    try:
        with ThreadPoolExecutor(C.LANES) as pool:
            runs = list(pool.map(C.dry_run, rigs))
        points = runs[0][1]
        for _, other in runs[1:]:
            assert other == points, "two dry runs passed through different crash points"
        trials = C.schedule(rigs[0].kind, points, n)

        def lane(i: int) -> None:
            for trial in trials[i :: C.LANES]:
                C.run_trial(rigs[i], trial, runs[i][0])

        with ThreadPoolExecutor(C.LANES) as pool:
            list(pool.map(lane, range(C.LANES)))
    finally:
        for rig in rigs:
            rig.close()
    lost = sum(t.lost for t in trials)
    line = (
        f"crash[pg-{framework}, state in PostgreSQL]: {len(trials)} kill points tried "
        f"({sum(len(p) for p in points.values())} enumerated over 3 steps), "
        f"{sum(t.status == -9 for t in trials)} killed, data lost {lost}, "
        f"trials with problems {sum(bool(t.problems) for t in trials)}, "
        f"{time.perf_counter() - t0:.1f} s"
    )
    K.SUMMARY.append(line)
    print(line)
    return trials


@pytest.fixture(params=R.FRAMEWORKS)
def framework(request: pytest.FixtureRequest) -> str:
    pytest.importorskip("langchain_postgres")
    pytest.importorskip("llama_index.vector_stores.postgres")
    return str(request.param)


@pytest.mark.slow
def test_pg_kill_anywhere_then_a_fresh_process_reverts_exactly(
    zygote: Zygote, framework: str, pg_server: str, tmp_path: Path
) -> None:
    trials = _suite(zygote, framework, tmp_path, pg_server, N_KILLS)
    assert {t.step for t in trials} == {1, 2, 3}
    points = {t.point.partition("#")[0] for t in trials}
    assert {
        "store.batch",
        "state.put",
        "journal.switch",
        "journal.switched",
        "journal.mark",
        "finetune.read",
        "finetune.fit",
    } <= points
    C.assert_clean(trials, 20)
    assert zygote.threads_now() == 1


def test_pg_kill_smoke(zygote: Zygote, framework: str, pg_server: str, tmp_path: Path) -> None:
    """A few kill points for the fast suite: mid-write, with a state transaction open, right
    after the switch, mid-revert; each recovered by a fresh process with a fresh home."""
    rig = PgCrashRig(zygote, framework, tmp_path, pg_server)
    try:
        snaps, points = C.dry_run(rig)
        assert "state.put#1" in points[1] and "journal.file#1" not in points[1]
        rig.restore_stage(0)
        assert rig.step(1, NUDGE_RAG_KILL_AT="store.batch#2").killed
        mid = rig.snap("mid")
        assert K.diff(mid, snaps[0]) and K.diff(mid, snaps[1])  # half-written, really
        trials = [
            C.Trial(1, "store.batch#2", "revert"),
            C.Trial(2, "state.put#2", "revert"),
            C.Trial(2, "journal.switched#1", "redo"),
            C.Trial(3, "store.batch#1", "redo"),
        ]
        for t in trials:
            assert t.point in points[t.step], (t.point, points[t.step])
            C.run_trial(rig, t, snaps)
    finally:
        rig.close()
    C.assert_clean(trials, 4)
