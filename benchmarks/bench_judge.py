"""Issue 20: the simulated chatbot with a relevance judge (``ft.update(judge=...)``).

Traffic (train + val queries of the paper split) arrives in batches of 50; users confirm the
relevant records among the top 10 they are shown; after each batch the store is refitted. With a
judge, every logged query is also shown to a simulated judge with the union of its top 100
records under the current and the original vectors; the judge names one relevant record with
probability ``accuracy`` (the best graded, the first listed among equals; else a random wrong
candidate) and, where none is relevant, answers "none" with probability ``accuracy`` (else a
random wrong one). The random judge names a random candidate every time.

Two engines, the same judge and the same weighing (``nudge_rag.judge.training_pairs``):

  api   the public API: a LangChain InMemoryVectorStore, the LangChain feedback handler attached
        to every retrieval, users' confirmations via ``ft.record``, ``ft.update(judge=fn)``
        after each batch, retrieval (traffic and test) through the retriever update() returns.
  sim   numpy: the same loop, candidates and judge cache rules (``nudge_rag.judge.to_ask``)
        over FeedbackEntry lists, the finetuner's defaults in numpy (bench_gains.finetuner_default).

Each run writes ``benchmarks/results/judge_runs/<dataset>-<engine>-<judge>-s<seed>.json``;
``--report`` gathers them into ``benchmarks/results/judge.md`` / ``judge.json`` and the curves
``judge_<dataset>.png``.

Run: ``python benchmarks/bench_judge.py --engine api --datasets scifact --judges users,1.0,0.9,0.8,0.5,random``
then ``python benchmarks/bench_judge.py --report``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_gains as bg

from nudge_rag.core import QuerySet
from nudge_rag.evaluation.metrics import ranking_metrics
from nudge_rag.feedback import FeedbackEntry
from nudge_rag.judge import (
    Candidate,
    JudgeOptions,
    by_query,
    candidate_digest,
    to_ask,
    training_pairs,
    users_holdout,
)

logger = logging.getLogger("bench_judge")

RESULTS = bg.RESULTS
RUNS = RESULTS / "judge_runs"
K = 10
BATCH = 50


# =============================================================================================
# The simulated judge
# =============================================================================================
class SimJudge:
    """``judge(query, candidates) -> ids`` with a given accuracy (None: random).

    Deterministic per (seed, query, candidate list), whatever order concurrent calls run in.
    """

    def __init__(
        self,
        c: bg.Corpus,
        accuracy: float | None,
        seed: int,
        j_of: Callable[[str], int],
        row_of: Callable[[str], int],
    ) -> None:
        self.c, self.accuracy, self.seed = c, accuracy, seed
        self.j_of, self.row_of = j_of, row_of
        self.calls = 0

    def __call__(self, query: str, candidates: list[Candidate]) -> list[str]:
        self.calls += 1
        if not candidates:
            return []
        digest = zlib.crc32(candidate_digest(query, [x.id for x in candidates]).encode())
        rng = np.random.default_rng([self.seed, digest])
        if self.accuracy is None:
            return [candidates[int(rng.integers(len(candidates)))].id]
        rel = self.c.answers[self.j_of(query)]
        grades = [rel.get(self.row_of(x.id), 0.0) for x in candidates]
        wrong = [k for k, g in enumerate(grades) if g <= 0]
        if max(grades) > 0:
            if rng.random() < self.accuracy:
                best = max(grades)
                return [candidates[grades.index(best)].id]
            return [candidates[int(rng.choice(wrong))].id] if wrong else []
        if rng.random() < self.accuracy:
            return []
        return [candidates[int(rng.choice(wrong))].id]


def parse_judge(name: str) -> float | str | None:
    if name in ("users", "random"):
        return None if name == "random" else "users"
    return float(name)


# =============================================================================================
# Engine "api": the public API through a LangChain store
# =============================================================================================
def run_api(
    c: bg.Corpus, traffic: np.ndarray, test: np.ndarray, judge: str, seed: int
) -> dict[str, Any]:
    from langchain_core.vectorstores import InMemoryVectorStore

    from nudge_rag import NudgeEmbeddingFinetuner
    from nudge_rag.embedding import LocalEmbedder
    from nudge_rag.integrations.langchain import as_langchain_embeddings

    store = InMemoryVectorStore(as_langchain_embeddings(LocalEmbedder(show_progress=False)))
    for rid, text, vec in zip(c.doc_ids, c.doc_texts, c.doc, strict=True):
        # the vectors bench_gains computed with the same model (no re-embedding of 5k docs)
        store.store[rid] = {"id": rid, "vector": [float(x) for x in vec], "text": text,
                            "metadata": {}}  # fmt: skip
    row = {d: i for i, d in enumerate(c.doc_ids)}
    j_of_text: dict[str, int] = {}
    for j in traffic.tolist():
        j_of_text.setdefault(c.texts[j], j)
    acc = parse_judge(judge)
    sim = (
        None if acc == "users" else SimJudge(c, acc, seed, j_of_text.__getitem__, row.__getitem__)  # type: ignore[arg-type]
    )
    tq = c.qs(test)
    trace: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as state:
        ft = NudgeEmbeddingFinetuner(store, state_dir=state, similarity_top_k=K)
        handler = ft.feedback_handler()
        retriever: Any = store.as_retriever(search_kwargs={"k": K})

        def quick() -> float:
            """Test NDCG@10 of the store's vectors now (numpy, cosine: what the retriever
            ranks by); the final number goes through the retriever itself."""
            vecs = np.asarray([store.store[d]["vector"] for d in c.doc_ids], dtype=np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            return bg.score(bg.Fitted(vecs), tq)[0]

        def evaluate(r: Any) -> tuple[float, float]:
            ranked = np.array([[row[d.id] for d in r.invoke(c.texts[j])] for j in test.tolist()])
            m = ranking_metrics(ranked, tq.indptr, tq.rows, tq.gains, K)
            return float(m.ndcg.mean()), float(m.hit.mean())

        t0 = time.perf_counter()
        n_conf = 0
        for s in range(0, len(traffic), BATCH):
            for j in traffic[s : s + BATCH].tolist():
                docs = retriever.invoke(c.texts[j], config={"callbacks": [handler]})
                shown = [d.id for d in docs]
                good = [d for d in shown if c.answers[j].get(row[d], 0) > 0]
                if good:
                    ft.record(c.texts[j], good, shown=shown)
                    n_conf += 1
            got = ft.update() if sim is None else ft.update(judge=sim)
            retriever = got if got is not None else retriever
            rep = ft.report
            point: dict[str, Any] = {
                "queries": s + len(traffic[s : s + BATCH]),
                "with_feedback": n_conf,
                "test_ndcg": quick(),
                "gamma": rep.gamma if rep else None,
                "n_train": rep.n_train if rep else None,
                "note": (rep.note[:60] if rep and rep.note else ""),
            }
            if rep is not None and rep.judge is not None:
                j = rep.judge
                point.update(
                    judged=j.n_judged, calls=j.n_calls, labels=j.n_labels, none=j.n_none,
                    agreement=j.agreement, trusted=j.trusted, used=j.n_used,
                    contradicting=j.n_contradicting,
                )  # fmt: skip
            trace.append(point)
            logger.info("%s %s s%d: %s", c.name, judge, seed, point)
        nd, hit = evaluate(retriever)
        total_calls = sim.calls if sim is not None else 0
        return {
            "ndcg": nd, "hit": hit, "trace": trace, "seconds": time.perf_counter() - t0,
            "judge_calls": total_calls, "with_feedback": n_conf,
            "judge_entries": sum(1 for e in ft.feedback if e.candidates),
        }  # fmt: skip


# =============================================================================================
# Engine "sim": the same loop in numpy
# =============================================================================================
def top_ids(scores: np.ndarray, k: int) -> np.ndarray:
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def run_sim(
    c: bg.Corpus, traffic: np.ndarray, test: np.ndarray, judge: str, seed: int,
    opts: JudgeOptions | None = None, user_val: bool = False,
) -> dict[str, Any]:  # fmt: skip
    opts = opts or JudgeOptions()
    acc = parse_judge(judge)
    sim = (
        None if acc == "users" else SimJudge(c, acc, seed, int, int)  # type: ignore[arg-type]
    )
    tq = c.qs(test)
    entries: list[FeedbackEntry] = []
    current = bg.Fitted(c.doc)
    trace: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    n_conf = 0
    logged: list[int] = []
    for s in range(0, len(traffic), BATCH):
        js = traffic[s : s + BATCH]
        shown = bg.top_k(current, c.q[js])
        for j, sh in zip(js.tolist(), shown, strict=True):
            ids = [str(int(r)) for r in sh]
            entries.append(FeedbackEntry(str(j), {}, 0.0, "handler", tuple(ids)))
            good = [i for i in ids if c.answers[j].get(int(i), 0) > 0]
            if good:
                entries.append(
                    FeedbackEntry(str(j), dict.fromkeys(good, 1.0), 0.0, "app", tuple(ids))
                )
                n_conf += 1
            logged.append(j)
        point: dict[str, Any] = {}
        if sim is not None:
            state = by_query(entries)
            need = [q for q, st in state.items() if not st.named]
            qv = c.q[[int(q) for q in need]]
            cur = top_ids(qv @ current.doc.T, opts.candidates)
            orig = top_ids(qv @ c.doc.T, opts.candidates)
            cands = {
                q: [Candidate(str(int(r)), "") for r in dict.fromkeys([*a.tolist(), *b.tolist()])]
                for q, a, b in zip(need, cur, orig, strict=True)
            }
            todo, _, _ = to_ask(state, cands, opts)
            labels = 0
            for q, cl in todo:
                ids = sim(q, cl)
                shown_ids = [x.id for x in cl]
                entries.append(
                    FeedbackEntry(q, dict.fromkeys(ids, opts.grade), 0.0, "judge",
                                  tuple(shown_ids), candidates=candidate_digest(q, shown_ids))
                )  # fmt: skip
                labels += len(ids)
            point.update(judged=len(todo), labels=labels)
        pairs, trust = training_pairs(entries, opts)
        if pairs:
            qs = QuerySet(
                c.q[[int(q) for q, _ in pairs]],
                [{int(i): g for i, g in a.items()} for _, a in pairs],
            )
            if user_val and trust.n_used:
                st = by_query(entries)
                pure = [k for k, (q, a) in enumerate(pairs) if set(a) == set(st[q].confirmed)]
                current = finetuner_user_val(c.doc, qs, np.asarray(pure, dtype=np.int64))
            else:
                current = bg.finetuner_default(c.doc, qs)
        point.update(
            queries=len(logged), with_feedback=n_conf, test_ndcg=bg.score(current, tq)[0],
            gamma=current.info.get("gamma"), n_pairs=len(pairs), agreement=trust.agreement,
            trusted=trust.trusted, used=trust.n_used, contradicting=trust.n_contradicting,
        )  # fmt: skip
        trace.append(point)
        logger.info("%s %s s%d: %s", c.name, judge, seed, point)
    nd, hit = bg.score(current, tq)
    return {
        "ndcg": nd, "hit": hit, "trace": trace, "seconds": time.perf_counter() - t0,
        "judge_calls": sim.calls if sim is not None else 0, "with_feedback": n_conf,
        "judge_entries": sum(1 for e in entries if e.candidates),
    }  # fmt: skip


def finetuner_user_val(doc: np.ndarray, qs: QuerySet, eligible: np.ndarray) -> bg.Fitted:
    """A diagnostic: the finetuner's defaults with validation queries held out only among
    ``eligible`` positions (users' own confirmations, no judge label)."""
    from nudge_rag.core import NudgeN
    from nudge_rag.errors import ConfigError

    model = NudgeN(val_fraction=0.2, seed=0)
    ok = np.zeros(len(qs), dtype=bool)
    ok[eligible] = True
    try:
        held = users_holdout(qs, ok.tolist(), 0.2, seed=0)
    except ConfigError:
        return bg.Fitted(doc, info={"gamma": 0.0})
    mask = np.zeros(len(qs), dtype=bool)
    mask[held] = True
    tr, va = qs.subset(np.flatnonzero(~mask)), qs.subset(held)
    res = model.fit(doc, tr, va)
    assert res.embeddings is not None
    before = bg.score(bg.Fitted(doc), va)[0]
    after = bg.score(bg.Fitted(res.embeddings), va)[0]
    if res.gamma == 0 or after < before - 1e-12:
        return bg.Fitted(doc, info={"gamma": 0.0})
    return bg.Fitted(bg.nudge(doc, qs, res.gamma), info={"gamma": res.gamma})


# =============================================================================================
# Reference rows and the report
# =============================================================================================
def references(c: bg.Corpus, traffic: np.ndarray, test: np.ndarray) -> dict[str, float]:
    tq = c.qs(test)
    full = bg.finetuner_default(c.doc, c.qs(traffic))
    return {
        "no fine-tuning": bg.score(bg.Fitted(c.doc), tq)[0],
        "full judgements of all traffic (finetuner defaults, once)": bg.score(full, tq)[0],
    }


LABELS = {
    "users": "users only: ft.update()",
    "1.0": "judge accuracy 1.0",
    "0.9": "judge accuracy 0.9",
    "0.8": "judge accuracy 0.8",
    "0.5": "judge accuracy 0.5",
    "0.3": "judge accuracy 0.3",
    "0.2": "judge accuracy 0.2",
    "random": "random judge",
}


def tail(run: dict[str, Any], n: int = 10) -> float:
    """Mean test NDCG@10 after the last ``n`` updates (less noisy than the final one)."""
    return float(np.mean([p["test_ndcg"] for p in run["trace"][-n:]]))


def paired_delta(
    rs: list[dict[str, Any]], users_rows: list[dict[str, Any]]
) -> tuple[str, str] | None:
    """Δ vs users-only paired per seed (same traffic order): final and last-10 means, in points,
    as "mean ± standard error (n)"; None when no seed has both runs."""
    users = {r["seed"]: r for r in users_rows}
    both = [(r, users[r["seed"]]) for r in rs if r["seed"] in users]
    if not both:
        return None

    def fmt(d: list[float]) -> str:
        se = float(np.std(d, ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
        return f"{100 * np.mean(d):+.2f} ± {100 * se:.2f} (n={len(d)})"

    return (
        fmt([r["ndcg"] - u["ndcg"] for r, u in both]),
        fmt([tail(r) - tail(u) for r, u in both]),
    )


def report() -> None:
    runs = [json.loads(p.read_text()) for p in sorted(RUNS.glob("*.json"))]
    out = [
        "# Learning past what users were shown: a relevance judge (issue 20)",
        "",
        "`python benchmarks/bench_judge.py --engine api|sim --datasets ... --judges ... --seeds ...`,"
        " then `--report`. The simulated chatbot: train + val queries arrive in batches of 50, "
        "users confirm the relevant records among the top 10 they are shown, the store is refitted "
        "after every batch; test NDCG@10 at the end (see the module docstring for the judge).",
        "",
        "Diagnostic variants (not what `update()` does): `allval` holds judge-labelled pairs out "
        "for γ too (update() holds out users' own confirmations only); `min_agreement=0` trusts "
        "every judge; `candidates=50` retrieves the top 50 instead of 100. Users-only and "
        "untrusted runs are the same under every variant. 'judge calls' counts calls over the "
        "whole run (every logged query once, plus re-asks about new candidates).",
        "",
    ]
    data: dict[str, Any] = {}
    for ds in sorted({r["dataset"] for r in runs}):
        refs = next(r["refs"] for r in runs if r["dataset"] == ds)
        engines = sorted(
            {r["engine"] for r in runs if r["dataset"] == ds}, key=lambda e: (e != "api", e)
        )
        for engine in engines:
            rows = [r for r in runs if r["dataset"] == ds and r["engine"] == engine]
            base_engine, _, variant = engine.partition("-")
            title = {
                "api": "public API (LangChain InMemoryVectorStore, feedback handler, ft.record, "
                "ft.update(judge=fn), retrieval through the retriever update() returns)",
                "sim": "numpy simulation of the same loop (nudge_rag.judge weighing, finetuner defaults)",
            }[base_engine]
            if variant:
                title += f", diagnostic variant: {variant.replace('agree', 'min_agreement=').replace('k', 'candidates=')}"
            if "orders" in variant:
                title = title.replace(", diagnostic variant: orders", "") + (
                    ", traffic in a seeded order per seed (seed 0: the split's order), "
                    "users-only run for every order; Δ is paired per order (mean ± standard error)"
                )
            out += [f"## {ds}, {title}", "", "| run | test NDCG@10 per seed | mean | Δ vs users only (points) | mean of the last 10 updates (Δ) | judge calls | judge entries | final agreement / trusted | seconds |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
            users_rows = [r for r in rows if r["judge"] == "users"]
            if not users_rows:  # the users-only run is the same for every variant
                users_rows = [r for r in runs if r["dataset"] == ds and r["judge"] == "users"
                              and r["engine"].split("-")[0] == engine.split("-")[0]]  # fmt: skip
            base = float(np.mean([r["ndcg"] for r in users_rows])) if users_rows else float("nan")
            tail_base = (
                float(np.mean([tail(r) for r in users_rows])) if users_rows else float("nan")
            )
            for name, ref in refs.items():
                out.append(
                    f"| {name} | {ref:.4f} | {ref:.4f} | {100 * (ref - base):+.2f} | | | | | |"
                )
            for judge in LABELS:
                rs = sorted((r for r in rows if r["judge"] == judge), key=lambda r: r["seed"])
                if not rs:
                    continue
                v = [r["ndcg"] for r in rs]
                last = rs[0]["trace"][-1]
                paired = paired_delta(rs, users_rows) if "orders" in variant else None
                agree = last.get("agreement")
                trust = f"{agree:.2f} / {last.get('trusted')}" if agree is not None else "–"
                out.append(
                    f"| {LABELS[judge]} | {' / '.join(f'{x:.4f}' for x in v)} | {np.mean(v):.4f} | "
                    f"{paired[0] if paired else f'{100 * (np.mean(v) - base):+.2f}'} | "
                    f"{np.mean([tail(r) for r in rs]):.4f} ({paired[1] if paired else f'{100 * (np.mean([tail(r) for r in rs]) - tail_base):+.2f}'}) | "
                    f"{int(np.mean([r['judge_calls'] for r in rs]))} | "
                    f"{int(np.mean([r['judge_entries'] for r in rs]))} | {trust} | "
                    f"{int(np.mean([r['seconds'] for r in rs]))} |"
                )
                data.setdefault(ds, {}).setdefault(engine, {})[judge] = {
                    "ndcg": v,
                    "seeds": [r["seed"] for r in rs],
                }
            out.append("")
            plot(ds, engine, rows, refs, RESULTS / f"judge_{ds}_{engine}.png")
            out += [f"Curves: `benchmarks/results/judge_{ds}_{engine}.png` (first seed).", ""]
    (RESULTS / "judge.md").write_text("\n".join(out) + "\n", encoding="utf-8")
    (RESULTS / "judge.json").write_text(json.dumps(data, indent=1), encoding="utf-8")
    print("\n".join(out))


def plot(
    ds: str, engine: str, rows: list[dict[str, Any]], refs: dict[str, float], path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for judge, label in LABELS.items():
        rs = sorted((r for r in rows if r["judge"] == judge), key=lambda r: r["seed"])
        if rs:
            tr = rs[0]["trace"]
            ax.plot([p["queries"] for p in tr], [p["test_ndcg"] for p in tr], label=label)
    styles = iter([":", "-."])
    for name, v in refs.items():
        ax.axhline(v, color="black", ls=next(styles), label=f"{name} ({v:.3f})")
    ax.set_xlabel("traffic queries served (update after every 50)")
    ax.set_ylabel("test NDCG@10")
    ax.set_title(f"Simulated chatbot with a relevance judge, {ds} ({engine})")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--engine", choices=("api", "sim"), default="api")
    ap.add_argument("--datasets", default="scifact")
    ap.add_argument("--judges", default="users,1.0,0.9,0.8,0.5,random")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--min-agreement", type=float, default=None, help="sim only: a diagnostic")
    ap.add_argument("--candidates", type=int, default=None, help="sim only: a diagnostic")
    ap.add_argument(
        "--orders",
        action="store_true",
        help="seed s also orders the traffic (s = 0: the paper split's order; else a seeded "
        "shuffle), and users-only runs for every seed: judge and users-only compared per order",
    )
    ap.add_argument(
        "--all-val",
        action="store_true",
        help="sim only, a diagnostic: hold out judge-labelled pairs for γ too (not what update() does)",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("nudge_rag").setLevel(logging.WARNING)
    if args.report:
        report()
        return 0
    RUNS.mkdir(parents=True, exist_ok=True)
    for ds in args.datasets.split(","):
        c, idx = bg.load_beir(ds, texts=args.engine == "api")
        traffic = np.concatenate([idx["train"], idx["val"]])
        refs = references(c, traffic, idx["test"])
        logger.info("%s references %s", ds, refs)
        for judge in args.judges.split(","):
            for seed in [int(s) for s in args.seeds.split(",")]:
                if judge == "users" and seed != int(args.seeds.split(",")[0]) and not args.orders:
                    continue  # no randomness without a judge
                variant = "-orders" if args.orders else ""
                order = traffic
                if args.orders and seed:
                    order = traffic[np.random.default_rng([7, seed]).permutation(len(traffic))]
                if args.engine == "api":
                    run = run_api(c, order, idx["test"], judge, seed)
                else:
                    kw: dict[str, Any] = {}
                    if args.min_agreement is not None:
                        kw["min_agreement"] = args.min_agreement
                        variant += f"-agree{args.min_agreement:g}"
                    if args.candidates is not None:
                        kw["candidates"] = args.candidates
                        variant += f"-k{args.candidates}"
                    if args.all_val:
                        variant += "-allval"
                    run = run_sim(
                        c, order, idx["test"], judge, seed, JudgeOptions(**kw), not args.all_val
                    )
                run.update(
                    dataset=ds, engine=args.engine + variant, judge=judge, seed=seed, refs=refs
                )
                name = f"{ds}-{args.engine}{variant}-{judge}-s{seed}.json"
                (RUNS / name).write_text(json.dumps(run, indent=1))
                logger.info(
                    "DONE %s %s %s s%d: NDCG@10 %.4f in %.0f s",
                    ds,
                    args.engine,
                    judge,
                    seed,
                    run["ndcg"],
                    run["seconds"],
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
