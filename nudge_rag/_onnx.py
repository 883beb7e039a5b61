"""The ONNX backends of :class:`nudge_rag.embedding.LocalEmbedder`: export once, run without torch.

A sentence-transformers folder (Transformer -> mean or CLS Pooling -> Normalize) is exported with
``torch.onnx.export`` to ``<root>/<name>-<key>/model.onnx``, and for ``int8`` its matrix products
are quantised dynamically (``onnxruntime.quantization.quantize_dynamic``, int8 weights per
channel) to ``model-int8.onnx`` beside it. ``<key>`` digests the model's files and the torch,
transformers, onnx and onnxruntime versions, so another model or library version exports anew.
Files are renamed into place when complete (concurrent exports are safe). Nothing is downloaded.
Once exported, embedding imports onnxruntime and tokenizers only (no torch).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nudge_rag._util import progress_bar
from nudge_rag.errors import ConfigError, require

__all__ = ["OnnxSentenceEncoder", "onnx_spec"]

logger = logging.getLogger(__name__)

_ONNX_FORMAT = 1  # bump when the export or the quantisation recipe changes

_POOLINGS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}


def onnx_spec(path: Path) -> dict[str, Any]:
    """What the ONNX backends need to know of a sentence-transformers folder: its sequence length
    and pooling. Only Transformer -> Pooling (mean or CLS) -> optional Normalize models with a
    fast tokenizer (``tokenizer.json``) are exported; anything else stays on torch.

    Raises:
        ConfigError: The folder holds another kind of model.
    """

    def read(name: str) -> Any:
        f = path / name
        return json.loads(f.read_text(encoding="utf-8")) if f.is_file() else None

    modules = read("modules.json") or []
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    if kinds[:2] != ["Transformer", "Pooling"] or set(kinds[2:]) - {"Normalize"}:
        msg = f"the ONNX backends export Transformer + Pooling (+ Normalize) models; {path} has {kinds or 'no modules.json'}"
        raise ConfigError(msg)
    if not (path / "tokenizer.json").is_file():
        msg = f"the ONNX backends need a fast tokenizer (tokenizer.json) in {path}"
        raise ConfigError(msg)
    pool_dir = next(
        m.get("path", "") for m in modules if str(m.get("type", "")).endswith("Pooling")
    )
    pooling_cfg = read(f"{pool_dir}/config.json") or {}
    on = [mode for key, mode in _POOLINGS.items() if pooling_cfg.get(key)]
    others = [
        k
        for k, v in pooling_cfg.items()
        if k.startswith("pooling_mode") and v and k not in _POOLINGS
    ]
    if len(on) != 1 or others:
        msg = f"the ONNX backends support mean or CLS pooling; {path} pools with {pooling_cfg}"
        raise ConfigError(msg)
    st_cfg = read("sentence_bert_config.json") or {}
    max_len = int(st_cfg.get("max_seq_length") or 512)
    return {"pooling": on[0], "max_seq_length": max_len}


def _export_key(path: Path) -> str:
    """Digest of what an export depends on: the model's files and the exporting libraries."""
    import importlib.metadata as md

    h = hashlib.sha256(f"onnx-format-{_ONNX_FORMAT}".encode())
    for name in ("torch", "transformers", "onnx", "onnxruntime"):
        try:
            h.update(f"{name}={md.version(name)};".encode())
        except md.PackageNotFoundError:
            h.update(f"{name}=none;".encode())
    for f in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix != ".md"):
        if f.name.startswith(".") or f.suffix == ".onnx":
            continue
        h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def _export_onnx(path: Path, out: Path, *, int8: bool) -> Path:
    """Export the transformer of ``path`` to ``out/model.onnx`` once (and quantise it to
    ``out/model-int8.onnx`` when ``int8``); each file is renamed into place when complete."""
    fp32 = out / "model.onnx"
    target = out / ("model-int8.onnx" if int8 else "model.onnx")
    if target.is_file():
        return target
    out.mkdir(parents=True, exist_ok=True)
    if not fp32.is_file():
        torch: Any = require("torch", extra="local")
        transformers: Any = require("transformers", extra="local")
        tok = transformers.AutoTokenizer.from_pretrained(str(path))
        transformers.utils.logging.disable_progress_bar()  # "Loading weights" of a 6-layer model
        net = transformers.AutoModel.from_pretrained(str(path))
        net.eval()
        enc = tok(
            ["an example text", "a second, longer example text"], padding=True, return_tensors="pt"
        )
        names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in enc]

        class _Hidden(torch.nn.Module):  # type: ignore[misc]
            def __init__(self) -> None:
                super().__init__()
                self.net = net

            def forward(self, *inputs: Any) -> Any:
                return self.net(**dict(zip(names, inputs, strict=True)), return_dict=False)[0]

        tmp = out / f".model.{uuid.uuid4().hex}.onnx.tmp"
        axes = {n: {0: "batch", 1: "tokens"} for n in [*names, "last_hidden_state"]}
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the tracer's and the exporter's deprecation notes
            torch.onnx.export(
                _Hidden(), tuple(enc[n] for n in names), str(tmp), input_names=names,
                output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17,
                dynamo=False,
            )  # fmt: skip
        os.replace(tmp, fp32)
    if int8:
        quant: Any = require("onnxruntime.quantization", extra="onnx")
        tmp = out / f".model-int8.{uuid.uuid4().hex}.onnx.tmp"
        with _quiet_root_logger():  # it advises pre-processing through the root logger
            quant.quantize_dynamic(
                str(fp32), str(tmp), weight_type=quant.QuantType.QInt8,
                per_channel=True, op_types_to_quantize=["MatMul"],
            )  # fmt: skip
        os.replace(tmp, target)
    return target


class _quiet_root_logger:
    """Drop root-logger records below ERROR for a while, without configuring logging."""

    def __enter__(self) -> None:
        root = logging.getLogger()
        self._added = not root.handlers
        self._handler = logging.NullHandler()
        if self._added:  # logging.warning() would call basicConfig() on a handler-less root
            root.addHandler(self._handler)
        self._level = root.level
        root.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        root = logging.getLogger()
        root.setLevel(self._level)
        if self._added:
            root.removeHandler(self._handler)


class OnnxSentenceEncoder:
    """A sentence-transformers model run by ONNX Runtime: tokenizer, transformer, pooling, unit
    norm. Made by :meth:`from_model`; :class:`LocalEmbedder` uses it for the ONNX backends.

    It answers the part of ``SentenceTransformer``'s interface the embedder calls (``encode``,
    ``get_sentence_embedding_dimension``), so it can stand in for one.
    """

    def __init__(
        self, onnx_file: Path, tokenizer_file: Path, *, pooling: str, max_seq_length: int
    ) -> None:
        ort: Any = require("onnxruntime", extra="onnx")
        tokenizers: Any = require("tokenizers", extra="local")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Threads sleep between runs instead of spinning: on a shared or busy machine spinning
        # steals the cores the next batch needs (measured: +20 % texts/s at load 18 on 2 cores).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(onnx_file), opts, providers=["CPUExecutionProvider"]
        )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_seq_length)
        self.pooling = pooling
        self.onnx_file = onnx_file
        self._dim: int | None = None

    @classmethod
    def from_model(
        cls, path: Path, onnx_root: Path, *, int8: bool, show_progress: bool = False
    ) -> OnnxSentenceEncoder:
        """Load the ONNX export of the model in ``path`` from ``onnx_root``, exporting it first
        if this model, with these library versions, was never exported there."""
        spec = onnx_spec(path)
        out = onnx_root / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', path.name)[-40:]}-{_export_key(path)}"
        target = out / ("model-int8.onnx" if int8 else "model.onnx")
        if not target.is_file():
            logger.info("exporting %s to ONNX%s in %s (once)", path, " int8" if int8 else "", out)
            bar = progress_bar(1, "exporting the model to ONNX (once)", "model", show=show_progress)
            try:
                _export_onnx(path, out, int8=int8)
                if bar is not None:
                    bar.update(1)
            finally:
                if bar is not None:
                    bar.close()
        return cls(target, path / "tokenizer.json", **spec)

    def get_sentence_embedding_dimension(self) -> int:
        if self._dim is None:
            self._dim = int(self.encode(["x"]).shape[1])
        return self._dim

    def encode(self, texts: Sequence[str], batch_size: int = 32, **_: Any) -> np.ndarray:
        """Unit-norm float32 vectors of ``texts``, ``batch_size`` texts per run."""
        out = []
        for start in range(0, len(texts), batch_size):
            enc = self.tokenizer.encode_batch(list(texts[start : start + batch_size]))
            width = max(len(e.ids) for e in enc)
            feeds = {
                "input_ids": np.zeros((len(enc), width), np.int64),
                "attention_mask": np.zeros((len(enc), width), np.int64),
                "token_type_ids": np.zeros((len(enc), width), np.int64),
            }
            for i, e in enumerate(enc):
                n = len(e.ids)
                feeds["input_ids"][i, :n] = e.ids
                feeds["attention_mask"][i, :n] = e.attention_mask
                feeds["token_type_ids"][i, :n] = e.type_ids
            hidden = self.session.run(None, {k: feeds[k] for k in self.input_names})[0]
            if self.pooling == "cls":
                vec = hidden[:, 0]
            else:
                mask = feeds["attention_mask"][..., None].astype(np.float32)
                vec = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
            norm = np.linalg.norm(vec, axis=1, keepdims=True)
            out.append(vec / np.maximum(norm, 1e-12))
        return np.concatenate(out).astype(np.float32, copy=False)
