"""Issue 21: the local model's backends (torch, ONNX fp32, ONNX dynamic int8) side by side.

A benchmark (never collected by pytest). In one run, on the same machine at the same time:

  speed    texts/s of each backend on a fixed sample of SciFact abstracts (seeded), the backends
           interleaved round by round (the machine is shared: a slow minute hits them all), with
           the load average before and after each round and the CPU flags that matter for int8
           (avx2, avx512_vnni / avx_vnni, amx_int8).
  quality  SciFact test NDCG@10 / Recall@10 per backend, with no fine-tuning and after what
           ``nudge-rag finetune`` runs on a BEIR folder (the paper's protocol: NUDGE-N and NUDGE-M,
           γ on the validation queries) and after ``method="auto"`` (what ``finetune()`` does on a
           store; the numpy replay of ``bench_gains.nudge_rag_auto``, fitted on train + val).
           Vectors from the embedding cache (each backend keys its own), embedded where missing.

Run: ``python benchmarks/bench_embedders.py`` (writes ``benchmarks/results/embedders.md`` and
``embedders.json``); ``--sample 500 --rounds 3`` by default, ``--no-quality`` for speed only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

from nudge_rag.core import QuerySet
from nudge_rag.embedding import LocalEmbedder
from nudge_rag.evaluation.datasets import load_beir
from nudge_rag.experiment import evaluate_embeddings, prepare_beir, run_methods

logger = logging.getLogger("bench_embedders")
RESULTS = Path(__file__).resolve().parent / "results"
BACKENDS = ("torch", "onnx", "onnx-int8")
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16")


def cpu_info() -> dict[str, Any]:
    """Model name, logical CPUs and the int8-relevant flags of this machine (Linux)."""
    model, flags = platform.processor() or "?", set()
    try:
        for line in (
            Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace").splitlines()
        ):
            if line.startswith("model name") and model in ("?", ""):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"model": model, "cpus": os.cpu_count(), "flags": [f for f in FLAGS if f in flags]}


def sample_texts(folder: Path, n: int, seed: int = 0, kind: str = "abstracts") -> list[str]:
    """A seeded sample of the corpus's records (``abstracts``) or of its queries (``queries``)."""
    data = load_beir(folder)
    pool = data.corpus if kind == "abstracts" else data.queries
    ids = list(pool)
    pick = np.random.default_rng(seed).choice(len(ids), min(n, len(ids)), replace=False)
    return [pool[ids[i]] for i in sorted(pick.tolist())]


def speed(
    folder: Path, n: int, rounds: int, backends: list[str], kind: str = "abstracts"
) -> dict[str, Any]:
    """texts/s per backend and round, interleaved (round r starts with backend r mod k)."""
    texts = sample_texts(folder, n, kind=kind)
    embedders = {b: LocalEmbedder(backend=b, use_cache=False) for b in backends}  # type: ignore[arg-type]
    for e in embedders.values():  # load (and export) before any clock starts; warm the kernels
        e.embed_documents(texts[:16])
    per: dict[str, list[float]] = {b: [] for b in backends}
    loads: list[tuple[float, float]] = []
    for r in range(rounds):
        order = backends[r % len(backends) :] + backends[: r % len(backends)]
        before = os.getloadavg()[0]
        for b in order:
            t0 = time.perf_counter()
            embedders[b].embed_documents(texts)
            per[b].append(len(texts) / (time.perf_counter() - t0))
            logger.info("round %d %s: %.1f texts/s", r, b, per[b][-1])
        loads.append((before, os.getloadavg()[0]))
    ref = embedders["torch"].embed_documents(texts) if "torch" in embedders else None
    cos = {}
    for b, e in embedders.items():
        if ref is not None:
            c = (e.embed_documents(texts) * ref).sum(axis=1)
            cos[b] = {"mean": float(c.mean()), "min": float(c.min())}
    return {"n": len(texts), "kind": kind, "rounds": rounds, "texts_per_s": per, "load": loads,
            "cosine": cos}  # fmt: skip


def quality(folder: Path, backends: list[str]) -> dict[str, Any]:
    """Test NDCG@10 / Recall@10 per backend: no fine-tuning, NUDGE-N, NUDGE-M, auto."""
    from bench_gains import nudge_rag_auto

    out: dict[str, Any] = {}
    for b in backends:
        emb = LocalEmbedder(backend=b, show_progress=True)  # type: ignore[arg-type]
        t0 = time.perf_counter()
        exp = prepare_beir(folder, emb, show_progress=True)
        secs = time.perf_counter() - t0
        rows = run_methods(exp, ["nudge-n", "nudge-m"])
        res: dict[str, Any] = {
            "embed_seconds": secs,  # 0 where the cache held the vectors
            "rows": {r.name: {"ndcg": r.ndcg, "recall": r.recall, "gamma": r.gamma} for r in rows},
        }
        both = QuerySet(
            np.concatenate([exp.train.embeddings, exp.val.embeddings]),
            exp.train.answers() + exp.val.answers(),
        )
        f = nudge_rag_auto(exp.doc_emb, both)
        m = evaluate_embeddings(
            f.doc, QuerySet(f.queries(exp.test.embeddings), exp.test.answers()), 10
        )
        res["rows"]["auto"] = {
            "ndcg": float(m.ndcg.mean()),
            "recall": float(m.recall.mean()),
            "chosen": f.info.get("chosen"),
        }
        out[b] = res
        logger.info("%s: %s", b, res)
    return out


def render(result: dict[str, Any]) -> str:
    sp, cpu = result["speed"], result["cpu"]
    lines = [
        "# Embedder backends: speed and SciFact quality",
        "",
        f"Machine: {cpu['model']}, {cpu['cpus']} logical CPUs, flags {', '.join(cpu['flags']) or 'none of ' + ', '.join(FLAGS)};",
        f"{result['versions']}. Run {result['when']} UTC; `python benchmarks/bench_embedders.py`.",
        "",
        f"## Speed: {sp['n']} SciFact {sp.get('kind', 'abstracts')} (seed 0), {sp['rounds']} interleaved rounds, batch 32",
        "",
        "| backend | texts/s (median) | per round | speed-up vs torch | cosine to torch (mean / min) |",
        "|---|---|---|---|---|",
    ]
    med = {b: statistics.median(v) for b, v in sp["texts_per_s"].items()}
    for b, v in sp["texts_per_s"].items():
        c = sp["cosine"].get(b, {})
        cs = f"{c['mean']:.4f} / {c['min']:.4f}" if c else ""
        up = f"{med[b] / med['torch']:.2f}x" if "torch" in med else ""
        lines.append(f"| {b} | {med[b]:.1f} | {', '.join(f'{x:.1f}' for x in v)} | {up} | {cs} |")
    loads = ", ".join(f"{a:.1f}→{b:.1f}" for a, b in sp["load"])
    lines += [
        "",
        f"Load average (1 min) before→after each round: {loads} (2 cores; other jobs ran meanwhile, "
        "so compare backends within a round, not with other runs). "
        f"uptime at the start: `{result['uptime_start']}`; at the end: `{result['uptime_end']}`.",
        "",
    ]
    if result.get("quality"):
        q = result["quality"]
        names = [("no fine-tuning", "no fine-tuning"), ("nudge-n", "NUDGE-N (γ on val)"),
                 ("nudge-m", "NUDGE-M (γ on val)"), ("auto", "`method=\"auto\"`")]  # fmt: skip
        lines += [
            "## Quality: SciFact test NDCG@10 / Recall@10 (paper split, 5,183 records)",
            "",
            "| backend | " + " | ".join(n for _, n in names) + " | corpus + queries embedded in |",
            "|---|" + "---|" * (len(names) + 1),
        ]
        for b, res in q.items():
            cells = []
            for key, _ in names:
                r = res["rows"][key]
                d = ""
                if b != "torch" and "torch" in q:
                    d = f" ({(r['ndcg'] - q['torch']['rows'][key]['ndcg']) * 100:+.2f})"
                extra = f", γ {r['gamma']:.3g}" if r.get("gamma") else ""
                extra += f", {r['chosen']}" if r.get("chosen") else ""
                cells.append(f"{r['ndcg']:.4f}{d} / {r['recall']:.4f}{extra}")
            t = res["embed_seconds"]
            lines.append(
                f"| {b} | " + " | ".join(cells) + f" | {t:.0f} s{' (cache)' if t < 5 else ''} |"
            )
        lines += ["", "(in brackets: NDCG@10 points against torch)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=common.DATA_ROOT / "scifact")
    ap.add_argument("--sample", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kind", choices=["abstracts", "queries"], default="abstracts")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--no-quality", action="store_true")
    ap.add_argument(
        "--quality-backends",
        help="backends to measure NDCG for (default: --backends; onnx's vectors are torch's to "
        "cosine 1.0000, so on a busy machine torch,onnx-int8 saves a full corpus embedding)",
    )
    ap.add_argument("--speed-json", type=Path, help="reuse the speed part of an earlier run")
    ap.add_argument("--out", type=Path, default=RESULTS / "embedders.md")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import importlib.metadata as md
    import subprocess

    backends = args.backends.split(",")
    up = lambda: subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()  # noqa: E731
    result: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "cpu": cpu_info(),
        "versions": ", ".join(
            f"{p} {md.version(p)}" for p in ("torch", "onnxruntime", "sentence-transformers")
        ),
        "uptime_start": up(),
    }
    if args.speed_json:
        earlier = json.loads(args.speed_json.read_text(encoding="utf-8"))
        result.update({k: earlier[k] for k in ("when", "cpu", "versions", "uptime_start", "speed")})
    else:
        result["speed"] = speed(args.data, args.sample, args.rounds, backends, args.kind)
    qb = (args.quality_backends or args.backends).split(",")
    result["quality"] = None if args.no_quality else quality(args.data, qb)
    result["uptime_end"] = up()
    md_text = render(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(md_text, encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(md_text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
