"""The ``nudge-rag`` command: the argument parser, and one library call per sub-command.

What a SOURCE is and what each command does with it live in :mod:`nudge_rag.sources`; the
fine-tuning in :class:`~nudge_rag.NudgeEmbeddingFinetuner`. Exit codes: 0 success, 2 bad input
(missing or unreadable file, malformed data, unknown store, bad option, missing fine-tuning
state, any :class:`~nudge_rag.errors.NudgeError`), 1 anything else. Errors print one line
(``nudge-rag: error: ...``), never a traceback, unless ``--debug``. Nothing is written before
every check has passed; a write-back that fails half-way is rolled back by the finetuner.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from nudge_rag import sources
from nudge_rag.embedding import on_backend
from nudge_rag.errors import ConfigError, DatasetError, NudgeError
from nudge_rag.sources import chunk_text, read_documents

__all__ = ["chunk_text", "main", "read_documents"]  # chunk_text, read_documents: kept importable


def _out_file(path: str | Path) -> Path:
    out = Path(path).expanduser()
    if out.is_dir():
        msg = f"--out {str(path)!r} is a directory; expected a file name"
        raise ConfigError(msg)
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _write_json(path: str | Path, data: Any) -> None:
    from nudge_rag.persist import atomic_write_bytes

    out = atomic_write_bytes(_out_file(path), json.dumps(data, indent=2).encode("utf-8"))
    print(f"report written to {out}")


def _open(args: argparse.Namespace, mode: sources.Mode = "build") -> sources.Source:
    return sources.open_source(args.source, store=args.store, collection=args.collection,  # --embed-model: checked first
                               embed_model=on_backend(sources.embedder_from(args.embed_model, not args.quiet), args.embed_backend, not args.quiet),
                               chunk_size=args.chunk_size, show_progress=not args.quiet, mode=mode)  # fmt: skip


# -- sub-commands: each checks its options, makes one library call and prints its result ----
def _cmd_finetune_beir(args: argparse.Namespace, folder: Path) -> int:
    given = {"--queries": args.queries, "--llm": args.llm, "--gamma": args.gamma,
             "--eval-queries": args.eval_queries, "--max-chunks": args.max_chunks}  # fmt: skip
    if not_here := [opt for opt, val in given.items() if val is not None]:
        msg = f"{', '.join(not_here)} do(es) not apply to a BEIR folder, which is fine-tuned with the paper's protocol on its own judged queries"
        raise ConfigError(msg)
    methods = ["nudge-n", "nudge-m"] if args.method in (None, "both", "auto") else [args.method]
    model = on_backend(sources.embedder_from(args.embed_model, not args.quiet), args.embed_backend, not args.quiet)  # fmt: skip
    print(f"Fine-tuning {folder} with {args.embed_model or 'the local all-MiniLM-L6-v2'}{f' on {args.embed_backend}' if args.embed_backend else ''} (offline; embeddings cached).")  # fmt: skip
    run = sources.finetune_beir(folder, methods, objective=args.objective, embed_model=model, show_progress=not args.quiet)  # fmt: skip
    print(run.summary())
    if args.out:
        out = Path(args.out)
        out = out if out.suffix.lower() == ".json" else out / "report.json"
        _write_json(out, run.to_dict()["rows"])  # the rows, one per method
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    folder = Path(args.source).expanduser() if args.source else sources.default_data_folder()
    if folder is None:
        raise DatasetError(sources.NO_DATA)
    if sources.detect_kind(folder) == "beir":
        return _cmd_finetune_beir(args, folder)
    if args.method == "both":
        msg = "--method both applies to BEIR folders only; a store is fine-tuned in place with one method"
        raise ConfigError(msg)
    from nudge_rag.core import NudgeN
    from nudge_rag.judged import JudgedQueries

    # Every input is checked before anything is built, read or written.
    NudgeN(gamma=args.gamma, objective=args.objective)
    train = sources.input_file(args.queries, "--queries")
    held_out = sources.input_file(args.eval_queries, "--eval-queries")
    llm = sources.load_llm(args.llm) if args.llm else None
    if train is not None:
        JudgedQueries.from_any(train, name="--queries")
    src = _open(args)
    print(f"Fine-tuning {src.label}...", flush=True)
    run = src.finetune(
        train, eval_queries=held_out, k=args.k, state_dir=args.state_dir,
        method=args.method or "auto", gamma=args.gamma, objective=args.objective,
        seed=args.seed, llm=llm, queries_per_chunk=args.queries_per_chunk,
        max_chunks=args.max_chunks, show_progress=not args.quiet,
    )  # fmt: skip
    print(run.summary())
    if run.report.written:
        print(f"undo with: {run.revert_command()}")
    if args.out:
        _write_json(args.out, run.to_dict())
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    out = _out_file(args.out)
    llm = sources.load_llm(args.llm) if args.llm else None
    ds = _open(args, mode="read").generate_queries(
        llm, queries_per_chunk=args.queries_per_chunk, max_chunks=args.max_chunks,
        seed=args.seed, show_progress=not args.quiet,
    )  # fmt: skip
    ds.save_json(out)
    st = ds.stats
    print(f"wrote {len(ds.queries)} queries for {st.n_chunks} chunks ({st.generator}) to {out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    beir = sources.detect_kind(Path(args.source).expanduser()) == "beir"
    dataset = sources.input_file(args.queries, "--queries")
    if not beir and dataset is None:
        msg = "--queries FILE is required for a store: a LlamaIndex EmbeddingQAFinetuneDataset JSON whose relevant_docs name the store's chunk ids (see nudge-rag generate-queries)"
        raise ConfigError(msg)
    if beir and args.compare_to:
        msg = "--compare-to needs a store (a BEIR folder keeps no fine-tuned vectors)"
        raise ConfigError(msg)
    if args.plot and not args.compare_to:
        msg = "--plot needs --compare-to STATE_DIR (it draws before vs after)"
        raise ConfigError(msg)
    src = _open(args)
    print(f"{src.label}, queries from {dataset or src.path}; exact search", end="")
    if args.compare_to:
        cmp = src.compare(dataset, args.k, Path(args.compare_to), split=args.split)
        print(f", before = originals in {args.compare_to}\n{cmp.table()}")
        if args.plot:  # the γ panel: the state's validation curve, or why it has none
            print(f"plot written to {sources.plot_compared(cmp, args.plot, args.compare_to)}")
        result = cmp.to_dict()
    else:
        res = src.evaluate(dataset, args.k, split=args.split, adaptor=src.adaptor_in_force())
        print(f"\n{res.summary()}")
        result = res.to_dict(per_query=False)
    if args.out:
        _write_json(args.out, result)
    return 0


def _cmd_revert(args: argparse.Namespace) -> int:
    src = _open(args, mode="open")
    rep = src.revert(args.state_dir)
    if rep.n_restored == 0 and rep.note:  # the state says nothing was written, or all reverted
        print(f"nothing to revert in {src.label}: {rep.note}")
        return 0
    print(f"{src.label}: {rep.summary()}")
    return 0 if rep.ok else 1


def _cmd_bench(args: argparse.Namespace) -> int:
    for cmd in sources.bench_commands(args.data, quick=args.quick):
        print("$ " + " ".join(cmd), flush=True)
        if not args.dry_run and (rc := subprocess.call(cmd, cwd=str(Path(cmd[1]).parents[1]))):
            print(f"nudge-rag: error: {Path(cmd[1]).name} exited with {rc}", file=sys.stderr)
            return 1
    return 0


# -- the parser ------------------------------------------------------------------------------
def _number(cast: type, low: float, what: str) -> Any:
    def parse(v: str) -> Any:
        try:
            x = cast(v)
        except ValueError:
            x = low - 1
        if not x >= low:
            raise argparse.ArgumentTypeError(f"expected {what}, received {v!r}")
        return x

    return parse


_positive_int = _number(int, 1, "a positive integer")
_non_negative_float = _number(float, 0.0, "a number >= 0")

SOURCE_HELP = (
    "a BEIR folder, a folder of .txt/.md documents (or one such file), a persisted LlamaIndex "
    "index directory, or a Chroma directory"
)

MAIN_EPILOG = """\
SOURCE is any of:
  BEIR folder          corpus.jsonl, queries.jsonl, qrels/*.tsv (the NUDGE paper's protocol)
  documents folder     .txt/.md files, chunked by paragraphs (ids "path/to/file.md#0"),
                       embedded into a persistent Chroma store (--store, default ./nudge_store)
  LlamaIndex index     a folder written by index.storage_context.persist() (saved back crash-safely)
  Chroma directory     a folder with chroma.sqlite3 (PersistentClient), --collection NAME

Everything runs offline with the local all-MiniLM-L6-v2 model (embeddings cached in
~/.cache/nudge_rag, or $NUDGE_RAG_CACHE); a store built with another model (bge-small, e5-small)
needs --embed-model PATH_OR_ID (its sentence-transformers folder, or its id in the local Hugging
Face cache): finetune refuses a model whose vectors do not match the stored ones. Fine-tuning state is kept beside the store
(<store>/nudge_state/...), for `nudge-rag revert`.

examples:
  nudge-rag finetune                                  # SciFact from ../shared/data, before/after
  nudge-rag finetune docs/                            # embed, write queries, fine-tune, report
  nudge-rag generate-queries docs/ --out train.json   # inspect / edit the training queries
  nudge-rag evaluate nudge_store --queries heldout.json --compare-to nudge_store/nudge_state/docs
  nudge-rag revert nudge_store                        # the store exactly as before
  nudge-rag finetune storage/                         # a persisted LlamaIndex index

exit codes: 0 ok, 2 bad input (missing/unreadable file, unknown store, bad option, no state), 1 other.
"""

# command: (help, description, examples)
COMMANDS = {
    "finetune": (
        "fine-tune a store (or a BEIR folder) and print before/after metrics",
        """\
BEIR folder: the NUDGE paper's protocol (70/10/20 split, seed 0; γ chosen on the
validation queries); prints test NDCG@10 / Recall@10 before and after ('covered' test
queries have a relevant record a training query also points to). Nothing is written.

Store (documents, LlamaIndex index, Chroma directory): training queries from --queries
or written for the stored chunks (offline generator, or --llm); the stored vectors are
fine-tuned in place, their originals kept for `nudge-rag revert` (the command is printed).""",
        """\
  nudge-rag finetune                                # ../shared/data/scifact
  nudge-rag finetune ../shared/data/nfcorpus --method nudge-n --out report.json
  nudge-rag finetune docs/ --store my_store
  nudge-rag finetune docs/ --llm my_llms:make_llm --queries-per-chunk 3
  nudge-rag finetune storage/ --queries train.json --eval-queries val.json
  nudge-rag finetune chroma_dir/ --collection docs --method nudge-m   # ip space only""",
    ),
    "generate-queries": (
        "write training queries for a SOURCE's chunks (LlamaIndex JSON)",
        """\
Write questions for the chunks of SOURCE in LlamaIndex's EmbeddingQAFinetuneDataset
JSON, the file `finetune --queries` and `evaluate --queries` read. A documents folder is
only chunked. The offline generator samples key phrases (no model); --llm asks an LLM.""",
        """\
  nudge-rag generate-queries docs/ --out train.json
  nudge-rag generate-queries storage/ --llm my_llms:make_llm --max-chunks 500 --out q.json

my_llms.py (in the working directory):
  def make_llm():
      from llama_index.llms.ollama import Ollama
      return Ollama(model='llama3.1')     # or langchain_openai.ChatOpenAI(), or a function""",
    ),
    "evaluate": (
        "NDCG@k, Recall@k, MRR@k and hit rate of a SOURCE on judged queries",
        """\
Rank every query by exact search over the SOURCE's vectors (with the store's
similarity) and print the mean metrics. With --compare-to STATE_DIR, evaluate the
original vectors kept there against the fine-tuned ones (the store is only read).
A BEIR folder is evaluated untouched, on its test qrels by default.""",
        """\
  nudge-rag evaluate ../shared/data/scifact --k 10
  nudge-rag evaluate docs/ --queries heldout.json
  nudge-rag evaluate storage/ --queries val.json --compare-to storage/nudge_state --plot cmp.png""",
    ),
    "revert": (
        "write the original vectors back (the store exactly as before)",
        """\
Write back every original vector kept in the state folder by `finetune` (records the
user changed since are left as they are). Exits 2 when there is no state where it looks.""",
        """\
  nudge-rag revert nudge_store                  # state in nudge_store/nudge_state/<collection>
  nudge-rag revert storage/ --state-dir storage/nudge_state""",
    ),
    "bench": (
        "reproduce the benchmark tables (docs/benchmarks.md) from ../shared/data",
        """\
Run benchmarks/bench_quality.py (NUDGE, the authors' nudge-ft, a linear adaptor, full
fine-tuning) and bench_scale.py from a checkout: hours; --quick takes minutes. The
reference rows need `pip install -r benchmarks/requirements.txt`.""",
        "  nudge-rag bench --quick\n  nudge-rag bench --dry-run",
    ),
}


# fmt: off
def _store_options(sp: argparse.ArgumentParser) -> None:
    g = sp.add_argument_group("store options")
    g.add_argument("--store", metavar="DIR", help=f"documents SOURCE: the Chroma store folder (default ./{sources.DEFAULT_STORE})")
    g.add_argument("--collection", metavar="NAME", help="Chroma collection (default: the only one; documents: the folder's name), or LlamaIndex index id")
    g.add_argument("--chunk-size", type=_positive_int, default=sources.DEFAULT_CHUNK_CHARS, metavar="CHARS",
                   help=f"documents SOURCE: maximum chunk length in characters (default {sources.DEFAULT_CHUNK_CHARS})")
    g.add_argument("--embed-model", metavar="PATH_OR_ID", help="the sentence-transformers model (folder, or id in the local Hugging Face cache) that built the store; default: the shipped all-MiniLM-L6-v2")
    g.add_argument("--embed-backend", choices=["auto", "torch", "onnx", "onnx-int8"], help="how the local model runs: torch, onnx (ONNX Runtime, the same vectors; the onnx extra) or onnx-int8 (quantised: cosine ~0.995 to torch's); default auto: onnx with the onnx extra, else torch; see docs/embedders.md")
    sp.add_argument("--quiet", action="store_true", help="no progress bars")


def _generation_options(sp: argparse.ArgumentParser) -> None:
    g = sp.add_argument_group("query generation")
    g.add_argument("--llm", metavar="MODULE:FUNCTION", help="an importable factory returning an LLM (LlamaIndex, "
                   "LangChain, or a callable prompt -> str); default: the offline generator (no model)")
    g.add_argument("--queries-per-chunk", type=_positive_int, default=2, metavar="N", help="default 2")
    g.add_argument("--max-chunks", type=_positive_int, metavar="N", help="write queries for a sample of N chunks")
    g.add_argument("--seed", type=int, default=0, help="seed of samples and splits (default 0)")


def build_parser() -> argparse.ArgumentParser:
    """The ``nudge-rag`` argument parser (each sub-command's ``func`` runs it)."""
    from nudge_rag import __version__

    fmt = argparse.RawDescriptionHelpFormatter
    ap = argparse.ArgumentParser(prog="nudge-rag", epilog=MAIN_EPILOG, formatter_class=fmt, description=(
        "Fine-tune the embeddings stored in a RAG vector store with NUDGE (closed form, seconds, no model "
        "training), measure the change, and undo it."))
    ap.add_argument("--version", action="version", version=f"nudge-rag {__version__}")
    ap.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    cmd = {name: sub.add_parser(name, help=h, description=d, epilog="examples:\n" + e, formatter_class=fmt)
           for name, (h, d, e) in COMMANDS.items()}
    for name, func in (("finetune", _cmd_finetune), ("generate-queries", _cmd_generate),
                       ("evaluate", _cmd_evaluate), ("revert", _cmd_revert), ("bench", _cmd_bench)):
        cmd[name].set_defaults(func=func)

    ft = cmd["finetune"]
    ft.add_argument("source", nargs="?", metavar="SOURCE", help=SOURCE_HELP + " (default: ../shared/data/scifact)")
    ft.add_argument("--method", choices=["auto", "nudge-n", "nudge-m", "both"], help="a store: auto (default: NUDGE-N, a query adaptor, both or nothing, chosen on held-out queries), nudge-n or nudge-m; a BEIR folder: nudge-n, nudge-m or both (default)")
    ft.add_argument("--gamma", type=_non_negative_float, help="fix γ instead of choosing it")
    ft.add_argument("--objective", default="top1", help="what γ is chosen by: top1 (the paper) or ndcg@10 (default: top1)")
    ft.add_argument("--queries", metavar="FILE", help="training queries (LlamaIndex EmbeddingQAFinetuneDataset JSON) instead of generating")
    ft.add_argument("--eval-queries", metavar="FILE", help="held-out queries (same JSON) to evaluate before vs after, at --k")
    ft.add_argument("--k", type=_positive_int, default=10, help="cutoff for --eval-queries (default 10)")
    ft.add_argument("--state-dir", metavar="DIR", help="where originals are kept (default: inside the store)")
    ft.add_argument("--out", metavar="FILE", help="write the report as JSON (BEIR: a folder also works)")
    _store_options(ft)
    _generation_options(ft)

    gq = cmd["generate-queries"]
    gq.add_argument("source", metavar="SOURCE", help=SOURCE_HELP)
    gq.add_argument("--out", metavar="FILE", required=True, help="JSON file to write")
    _store_options(gq)
    _generation_options(gq)

    ev = cmd["evaluate"]
    ev.add_argument("source", metavar="SOURCE", help=SOURCE_HELP)
    ev.add_argument("--queries", metavar="FILE", help="judged queries: LlamaIndex EmbeddingQAFinetuneDataset JSON, or a BEIR folder")
    ev.add_argument("--split", help="BEIR qrels split (default: test)")
    ev.add_argument("--k", type=_positive_int, default=10, help="cutoff (default 10)")
    ev.add_argument("--compare-to", metavar="STATE_DIR", help="before = the originals kept there")
    ev.add_argument("--plot", metavar="PNG", help="with --compare-to: save the before/after bars")
    ev.add_argument("--out", metavar="FILE", help="write the metrics as JSON")
    _store_options(ev)

    rv = cmd["revert"]
    rv.add_argument("source", metavar="SOURCE", help=SOURCE_HELP)
    rv.add_argument("--state-dir", metavar="DIR", help="the state folder (default: inside the store)")
    _store_options(rv)

    bn = cmd["bench"]
    bn.add_argument("--quick", action="store_true", help="SciFact, no model training, N=100k scale run")
    bn.add_argument("--data", metavar="DIR", help="BEIR folder (default: ../shared/data)")
    bn.add_argument("--dry-run", action="store_true", help="print the commands only")
    return ap
# fmt: on


def main(argv: list[str] | None = None) -> int:
    """Run ``nudge-rag`` with ``argv`` (default: the command line); return the exit code."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")
    ap = build_parser()
    try:
        args = ap.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (exit 2)
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    level = logging.DEBUG if args.debug else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "quiet", False):
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if not getattr(args, "func", None):
        ap.print_help()
        return 2
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("nudge-rag: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"nudge-rag: error: {_one_line(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, (NudgeError, OSError)) else 1


def _one_line(exc: Exception) -> str:
    """Bad input (ours, or a file that cannot be read or written) says why; a bug says what."""
    if isinstance(exc, NudgeError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    return f"{type(exc).__name__}: {exc} (run with --debug for details)"


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
