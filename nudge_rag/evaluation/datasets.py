"""Where the data sets used to live; kept so that old imports keep working.

BEIR folders and the paper's split are :mod:`nudge_rag.beir`; judged queries, LlamaIndex's
``EmbeddingQAFinetuneDataset`` JSON included, are :mod:`nudge_rag.judged`.
"""

from __future__ import annotations

from nudge_rag.beir import BeirData, Judgements, load_beir, paper_split
from nudge_rag.judged import JudgedQueries, QADataset

__all__ = ["BeirData", "JudgedQueries", "Judgements", "QADataset", "load_beir", "paper_split"]
