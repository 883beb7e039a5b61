"""Fault injection: kill -9 at the named crash points of finetune, journal, write-back, persist
and revert, on stores that live on disk; then a new process opens the store and reverts, and
every record must be exactly as it was before the first fine-tune.

Each store goes through three steps, each in a process of its own (forked from the zygote, see
safety_zygote.py):

    step 1: finetune(q1)  on the original store
    step 2: finetune(q2)  on the store step 1 left (a second fine-tune: q1 and q2 share records)
    step 3: revert()

A dry run with ``NUDGE_RAG_FAULT_LOG`` lists the crash points each step passes through (every
pass counts: ``store.batch#4`` is the 4th batch) and snapshots the store after each step; the
store and state folders after each step are kept as stages. A seeded schedule then draws the
kill points: one per distinct (step, point name), the rest at random. For each: the stage
before the step is put back (at the same paths: identities come from them), the step runs with
``NUDGE_RAG_KILL_AT`` armed and must die of SIGKILL there, and the store is recovered in new
processes, one of two ways (seeded):

- ``revert``: revert(); the store must equal the original, bit for bit;
- ``redo``: the killed step is run again (after a killed revert: finetune(q2)); the store must
  equal what the dry run had after that step (a resumed fine-tune starts from the originals,
  never from a half-written store), then revert(); the store must equal the original.

No recovery may report a record as changed, adopted, deleted or mismatched: nobody but us
touched the store. Trials run in two lanes side by side, each with its own copy of the store
(and its own dry run: identities come from paths), which must pass through the same points. Data lost = trials whose final store differs from the original in any id,
vector, text or metadata.
"""

from __future__ import annotations

import random
import shutil
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import safety_kit as K
from safety_zygote import JobResult, Zygote

STEPS = {1: "finetune q1", 2: "finetune q2", 3: "revert"}
SEED = 20250509
N_KILLS = 24  # per store, at least 20
BATCH = 3  # records per write batch: many batch points
LANES = 2  # trials run two at a time (CI has 2 cores; the children wait on fsync as much as CPU)
FAST_CASE = ("simple", "persist.file#1")  # the one kill-then-edit case outside the slow suite


@dataclass
class Trial:
    step: int
    point: str  # "name#n"
    mode: str  # "revert" | "redo"
    status: int = 0
    problems: list[str] = field(default_factory=list)
    lost: bool = False


class CrashRig:
    """One store kind under fault injection, at fixed paths under ``base``."""

    def __init__(self, zygote: Zygote, kind: str, base: Path) -> None:
        self.z = zygote
        self.kind = kind
        self.base = base
        self.root = base / "work"  # the store lives at root/<kind>
        self.home = base / "home"  # NUDGE_RAG_HOME: the states
        self.cwd = base / "cwd"  # the children's working directory (nothing may land there)
        self.stages = base / "stages"
        self.snaps = base / "snaps"
        for d in (self.root, self.home, self.cwd, self.stages, self.snaps):
            d.mkdir(parents=True, exist_ok=True)
        self._n = 0

    # -- running jobs --------------------------------------------------------------------------

    def run(self, target: str, kwargs: dict[str, Any], *, name: str, **env: str) -> JobResult:
        envs: dict[str, str | None] = {
            "NUDGE_RAG_HOME": str(self.home),
            "NUDGE_RAG_KILL_AT": None,
            "NUDGE_RAG_FAULT_LOG": None,
            **env,
        }
        args = {"kind": self.kind, "root": str(self.root), **kwargs}
        return self.z.run(f"safety_kit:{target}", args, env=envs, cwd=self.cwd, name=name)

    def step(self, k: int, **env: str) -> JobResult:
        if k == 1:
            return self.run(
                "job_finetune", {"queries_name": "q1", "write_batch_size": BATCH}, name="q1", **env
            )
        if k == 2:
            return self.run(
                "job_finetune", {"queries_name": "q2", "write_batch_size": BATCH}, name="q2", **env
            )
        return self.run("job_revert", {"write_batch_size": BATCH}, name="revert", **env)

    def snap(self, label: str) -> K.Snapshot:
        self._n += 1
        out = self.snaps / f"{self._n:04d}-{label}"
        self.run("job_snapshot", {"out": str(out)}, name="snap").check()
        return K.Snapshot.load(out)

    # -- stages: the store and its state after each step, put back at the same paths ----------

    def save_stage(self, k: int) -> None:
        dst = self.stages / str(k)
        shutil.copytree(self.root, dst / "work")
        shutil.copytree(self.home, dst / "home")

    def restore_stage(self, k: int) -> None:
        src = self.stages / str(k)
        for live, saved in ((self.root, src / "work"), (self.home, src / "home")):
            shutil.rmtree(live)
            shutil.copytree(saved, live)
        shutil.rmtree(self.cwd)
        self.cwd.mkdir()


def dry_run(rig: CrashRig) -> tuple[dict[int, K.Snapshot], dict[int, list[str]]]:
    """Build the store, run the three steps once with the fault log on; snapshots and points."""
    rig.run("job_build", {}, name="build").check()
    snaps = {0: rig.snap("s0")}
    rig.save_stage(0)
    points: dict[int, list[str]] = {}
    for k in STEPS:
        log = rig.base / f"faults-{k}.log"
        rig.step(k, NUDGE_RAG_FAULT_LOG=str(log)).check()
        points[k] = log.read_text().split() if log.exists() else []
        snaps[k] = rig.snap(f"s{k}")
        rig.save_stage(k)
    # The clean run itself: it moved records, and revert put every one back.
    assert K.diff(snaps[1], snaps[0]), "step 1 wrote nothing: nothing to test"
    assert K.diff(snaps[2], snaps[1]), "step 2 wrote nothing: nothing to test"
    assert K.diff(snaps[3], snaps[0]) == [], "a clean revert did not restore the store"
    assert list(rig.cwd.iterdir()) == [], "something was written to the working directory"
    return snaps, points


def schedule(kind: str, points: dict[int, list[str]], n: int, seed: int = SEED) -> list[Trial]:
    """One kill per distinct (step, point name) at a random pass through it, then random others,
    up to ``n``; each with a random recovery mode. Seeded: the same trials on every run."""
    rng = random.Random(seed ^ zlib.crc32(kind.encode()))
    by_name: dict[tuple[int, str], list[str]] = {}
    for k, pts in sorted(points.items()):
        for p in pts:
            by_name.setdefault((k, p.partition("#")[0]), []).append(p)
    chosen = [(k, rng.choice(insts)) for (k, _), insts in sorted(by_name.items())]
    rest = [(k, p) for k, pts in sorted(points.items()) for p in pts if (k, p) not in chosen]
    rng.shuffle(rest)
    chosen += rest[: max(0, n - len(chosen))]
    return [Trial(k, p, rng.choice(["revert", "redo"])) for k, p in chosen]


def check_quiet(report: dict[str, Any], what: str, problems: list[str]) -> None:
    """Nobody touched the store but us: a recovery must not call a record the user's."""
    for key in ("adopted_ids", "deleted_ids", "changed_ids", "mismatched_ids"):
        if report.get(key):
            problems.append(f"{what} reported {key}={report[key][:3]}")


def run_trial(rig: CrashRig, trial: Trial, snaps: dict[int, K.Snapshot]) -> None:
    k = trial.step
    rig.restore_stage(k - 1)
    killed = rig.step(k, NUDGE_RAG_KILL_AT=trial.point)
    trial.status = killed.status
    if not killed.killed:
        trial.problems.append(
            f"step {k} was to be killed at {trial.point} but ended with status {killed.status}: "
            + killed.log_tail(1500)
        )
        return
    if trial.mode == "redo":
        if k == 3:
            redo = rig.step(2)
            want = snaps[2]
        else:
            redo = rig.step(k)
            want = snaps[k]
        if redo.status != 0:
            trial.problems.append(f"redo of step {k} failed: {redo.log_tail(1500)}")
        else:
            check_quiet(redo.value, "the redone step", trial.problems)
            got = rig.snap("redo")
            d = K.diff(got, want)
            if d:
                trial.problems.append(
                    f"the redone step left another store than a clean run: {d[:3]}"
                )
    rev = rig.run("job_revert", {"write_batch_size": BATCH}, name="recover")
    if rev.status != 0:
        trial.problems.append(f"revert after the kill failed: {rev.log_tail(1500)}")
    else:
        check_quiet(rev.value, "revert", trial.problems)
    final = rig.snap("final")
    d = K.diff(final, snaps[0])
    if d:
        trial.lost = True
        trial.problems.append(f"after revert the store differs from the original: {d[:3]}")


def crash_suite(zygote: Zygote, kind: str, base: Path, n_kills: int) -> list[Trial]:
    """The dry run and the schedule, run in LANES lanes side by side (each its own copy of the
    store at its own paths, its own dry run: identities come from paths)."""
    t0 = time.perf_counter()
    rigs = [CrashRig(zygote, kind, base / f"lane{i}") for i in range(LANES)]
    with ThreadPoolExecutor(LANES) as pool:
        runs = list(pool.map(dry_run, rigs))
    points = runs[0][1]
    for _, other in runs[1:]:
        assert other == points, "two dry runs passed through different crash points"
    trials = schedule(kind, points, n_kills)

    def lane(i: int) -> None:
        for trial in trials[i::LANES]:
            run_trial(rigs[i], trial, runs[i][0])

    with ThreadPoolExecutor(LANES) as pool:
        list(pool.map(lane, range(LANES)))
    names = Counter(f"{STEPS[t.step]}:{t.point.partition('#')[0]}" for t in trials)
    lost = sum(t.lost for t in trials)
    bad = [t for t in trials if t.problems]
    line = (
        f"crash[{kind}]: {len(trials)} kill points tried "
        f"({sum(len(p) for p in points.values())} enumerated over 3 steps, "
        f"{len(names)} distinct step:point), "
        f"{sum(t.status == -9 for t in trials)} killed, data lost {lost}, "
        f"trials with problems {len(bad)}, {time.perf_counter() - t0:.1f} s"
    )
    K.SUMMARY.append(line)
    print(line)
    return trials


def assert_clean(trials: list[Trial], n_min: int) -> None:
    lost = sum(t.lost for t in trials)
    problems = [
        f"step {t.step} {STEPS[t.step]} killed at {t.point} ({t.mode}): {p}"
        for t in trials
        for p in t.problems
    ]
    assert len(trials) >= n_min
    assert lost == 0, "\n".join(problems)
    assert not problems, "\n".join(problems)


@pytest.mark.slow
@pytest.mark.parametrize("kind", K.KINDS)
def test_kill_anywhere_then_revert_loses_nothing(zygote: Zygote, kind: str, tmp_path: Path):
    trials = crash_suite(zygote, kind, tmp_path, N_KILLS)
    # every step was killed somewhere, including the second fine-tune and the revert
    assert {t.step for t in trials} == {1, 2, 3}
    points = {t.point.partition("#")[0] for t in trials}
    assert {
        "store.batch",
        "journal.file",
        "journal.switch",
        "journal.switched",
        "journal.mark",
    } <= points
    assert {"finetune.read", "finetune.fit"} <= points
    if kind in K.PERSISTED:
        assert {"persist.written", "persist.file"} <= points
    assert_clean(trials, 20)
    assert zygote.threads_now() == 1  # still single-threaded: every fork was of a sound process


def test_kill_smoke(zygote: Zygote, tmp_path: Path):
    """A few kill points on one store, for the fast suite (the full schedule is marked slow);
    and the harness itself: a kill mid-write leaves a half-written store, which the snapshots
    tell apart from both the original and the fine-tuned one."""
    rig = CrashRig(zygote, "qdrant", tmp_path)
    snaps, points = dry_run(rig)
    rig.restore_stage(0)
    assert rig.step(1, NUDGE_RAG_KILL_AT="store.batch#2").killed
    mid = rig.snap("mid")
    assert K.diff(mid, snaps[0]) and K.diff(mid, snaps[1])
    trials = [
        Trial(1, "store.batch#2", "revert"),
        Trial(2, "journal.switched#1", "redo"),
        Trial(2, "store.batch#4", "revert"),
        Trial(3, "store.batch#1", "redo"),
    ]
    for t in trials:
        assert t.point in points[t.step], (t.point, points[t.step])
        run_trial(rig, t, snaps)
    assert_clean(trials, 4)


@pytest.mark.parametrize(
    ("kind", "point"),
    [
        pytest.param(kind, point, marks=[] if (kind, point) == FAST_CASE else [pytest.mark.slow])
        for kind, point in [(k, "store.batch#3") for k in K.KINDS]
        + [(k, "persist.file#1") for k in sorted(K.PERSISTED)]
    ],
)
def test_kill_then_user_changes_then_revert(zygote: Zygote, kind: str, point: str, tmp_path: Path):
    """A second fine-tune is killed half-way; before anyone reverts, the user edits a record both
    fine-tunes moved, edits one neither moved, and deletes one the second moved. revert() in a
    new process keeps the user's records as they set them, names them, and restores the rest."""
    rig = CrashRig(zygote, kind, tmp_path)
    rig.run("job_build", {}, name="build").check()
    s0 = rig.snap("s0")
    rig.step(1).check()
    assert rig.step(2, NUDGE_RAG_KILL_AT=point).killed
    rids = K.ids()
    edited, edited_other, deleted = rids[6], rids[30], rids[12]
    for rid, text, gone in (
        (edited, "record six rewritten on kelp", deleted),
        (edited_other, "record thirty rewritten on dunes", None),
    ):
        change = {"edit_id": rid, "text": text, "meta": {"v": 2}, "delete_id": gone}
        rig.run("job_user_changes", change, name="user").check()
    user = rig.snap("user")
    rev = rig.run("job_revert", {"write_batch_size": BATCH}, name="revert").check()
    assert rev["changed_ids"] == [edited]
    assert rev["deleted_ids"] == [deleted]
    assert rev["mismatched_ids"] == []
    final = rig.snap("final")
    assert final.ids == user.ids
    assert K.diff(final, user, only={edited, edited_other}) == []
    assert K.diff(final, s0, only=set(user.ids) - {edited, edited_other}) == []
    assert zygote.threads_now() == 1  # the zygote never started a thread: its forks are sound
