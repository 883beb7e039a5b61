"""Small BEIR folders for tests: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``."""

from __future__ import annotations

import json
from pathlib import Path


def write_beir_folder(
    root: Path,
    corpus: dict[str, str],
    queries: dict[str, str],
    splits: dict[str, list[tuple[str, str, int]]],
) -> Path:
    """Write ``root`` as a BEIR folder: records ``{id: text}`` (empty titles), queries
    ``{id: text}`` and, per split, qrels rows ``(query id, record id, grade)``."""
    root.mkdir(parents=True)
    (root / "corpus.jsonl").write_text(
        "\n".join(json.dumps({"_id": d, "title": "", "text": t}) for d, t in corpus.items()),
        encoding="utf-8",
    )
    (root / "queries.jsonl").write_text(
        "\n".join(json.dumps({"_id": q, "text": t}) for q, t in queries.items()),
        encoding="utf-8",
    )
    (root / "qrels").mkdir()
    for name, rows in splits.items():
        lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{g}" for q, d, g in rows]
        (root / "qrels" / f"{name}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root
