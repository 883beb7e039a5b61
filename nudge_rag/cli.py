"""The ``nudge-rag`` command, thin over the library.

Exit codes: 0 success, 2 bad input (missing folder, malformed data, bad option), 1 anything else.
Errors print one line (``nudge-rag: error: ...``), never a traceback, unless ``--debug``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

__all__ = ["main"]

_HERE = Path(__file__).resolve().parent


def default_data_folder() -> Path | None:
    """``../shared/data/scifact`` beside the working directory or beside the repository."""
    for base in (Path.cwd(), _HERE.parent):
        cand = (base / ".." / "shared" / "data" / "scifact").resolve()
        if cand.is_dir():
            return cand
    return None


NO_DATA = (
    "no data folder given, and ../shared/data/scifact was not found. Pass a BEIR-format folder: "
    "nudge-rag finetune PATH, where PATH holds corpus.jsonl, queries.jsonl and qrels/*.tsv "
    "(train.tsv and test.tsv at least), e.g. SciFact or NFCorpus from the BEIR benchmark."
)


def _cmd_finetune(args: argparse.Namespace) -> int:
    from nudge_rag.experiment import prepare_beir, run_methods

    folder = Path(args.folder) if args.folder else default_data_folder()
    if folder is None:
        print(f"nudge-rag: error: {NO_DATA}", file=sys.stderr)
        return 2
    methods = ["nudge-n", "nudge-m"] if args.method == "both" else [args.method]
    print(f"Fine-tuning {folder} with the local all-MiniLM-L6-v2 (offline; embeddings cached).")
    exp = prepare_beir(folder, show_progress=not args.quiet)
    print(
        f"{exp.name}: {len(exp.doc_ids)} records; paper split {len(exp.train)} train / "
        f"{len(exp.val)} validation / {len(exp.test)} test queries "
        f"({int(exp.covered.sum())} covered, {int((~exp.covered).sum())} uncovered)."
    )
    rows = run_methods(exp, methods, objective=args.objective)
    print()
    print(
        f"{'':16} {'NDCG@10':>8} {'Recall@10':>9} {'covered':>8} {'uncovered':>9} {'γ':>8} {'moved':>6} {'seconds':>8}"
    )
    for r in rows:
        gamma = "" if r.gamma is None else f"{r.gamma:.4g}"
        moved = "" if r.gamma is None else str(r.n_moved)
        secs = "" if r.gamma is None else f"{r.seconds:.2f}"
        print(
            f"{r.name:16} {r.ndcg:8.4f} {r.recall:9.4f} {r.ndcg_covered:8.4f} {r.ndcg_uncovered:9.4f} {gamma:>8} {moved:>6} {secs:>8}"
        )
    base = rows[0]
    for r in rows[1:]:
        print(
            f"{r.name}: test NDCG@10 {base.ndcg:.4f} -> {r.ndcg:.4f} ({100 * (r.ndcg - base.ndcg):+.1f} points)"
        )
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps([r.__dict__ for r in rows], indent=2))
        print(f"report written to {out / 'report.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="nudge-rag",
        description=(
            "Fine-tune the embeddings of a retrieval corpus with NUDGE (closed form, seconds, "
            "no model training). Runs offline with the local all-MiniLM-L6-v2 model."
        ),
    )
    from nudge_rag import __version__

    ap.add_argument("--version", action="version", version=f"nudge-rag {__version__}")
    ap.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    ft = sub.add_parser(
        "finetune",
        help="fine-tune a BEIR folder and print before/after test metrics",
        description=(
            "Embed a BEIR-format folder (corpus.jsonl, queries.jsonl, qrels/*.tsv) with the local "
            "model, split its judged queries as the NUDGE paper does (70/10/20, seed 0), fine-tune "
            "on the training queries, choose γ on the validation queries, and print NDCG@10 and "
            "Recall@10 on the test queries before and after; 'covered' test queries have a "
            "relevant record that a training query also points to (NUDGE moves only those)."
        ),
        epilog="example: nudge-rag finetune ../shared/data/scifact --method both",
    )
    ft.add_argument(
        "folder", nargs="?", help="BEIR folder (default: ../shared/data/scifact if it exists)"
    )
    ft.add_argument(
        "--method",
        choices=["nudge-n", "nudge-m", "both"],
        default="both",
        help="NUDGE variant (default: both)",
    )
    ft.add_argument(
        "--objective",
        default="top1",
        help="what γ is chosen by: top1 (the paper) or ndcg@10 (default: top1)",
    )
    ft.add_argument("--out", help="folder to write report.json to")
    ft.add_argument("--quiet", action="store_true", help="no progress bars")
    ft.set_defaults(func=_cmd_finetune)
    return ap


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    ap = build_parser()
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        ap.print_help()
        return 2
    from nudge_rag.errors import NudgeError

    try:
        return int(args.func(args))
    except NudgeError as exc:
        if args.debug:
            raise
        print(f"nudge-rag: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nudge-rag: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug or an environment problem: one line, exit 1
        if args.debug:
            raise
        print(
            f"nudge-rag: error: {type(exc).__name__}: {exc} (run with --debug for details)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
