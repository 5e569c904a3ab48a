"""GGUF files as transformers models, and the safetensors cache of their conversion.

transformers de-quantizes GGUF files slowly (parsing the GGUF in Python
dominates), so the converted weights and tokenizer are saved once under a cache
directory (the node's data dir) and read from there afterwards.  The cache holds
model weights only, never user data.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from node import models
from node.rag.generation.types import StatusFn, report

CACHE_MARKER = "ragraft-cache.json"


def gguf_cache_dir(gguf_path: Path, cache_dir: Path) -> Path:
    """Where the converted weights of one GGUF file live: ``<stem>-<hash>``.

    The hash covers the file's absolute path, size and modification time, so a
    replaced file gets a fresh conversion without hashing ~100 MB on every start.
    """
    st = gguf_path.stat()
    identity = f"{gguf_path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
    return cache_dir / f"{gguf_path.stem}-{digest}"


def _cache_is_complete(path: Path) -> bool:
    # The marker is written last, so a crash mid-save never leaves a "complete" cache.
    return (path / CACHE_MARKER).is_file() and any(path.glob("*.safetensors"))


_GGUF_PATCH_LOCK = threading.Lock()


@contextlib.contextmanager
def _reuse_gguf_parsing() -> Iterator[None]:
    """Make transformers' GGUF conversion parse the file once instead of three times.

    Converting SmolLM2 spent most of its time in pure-Python parsing: a fresh
    ``gguf.GGUFReader`` for the tokenizer, the config and the weights (~5 s each on
    2 busy cores, mostly the 49k-entry vocabulary), and ``gguf.get_tensor_name_map``
    rebuilt once per tensor (397 calls, ~7 s) though it depends only on the
    architecture and layer count.  transformers imports both from ``gguf`` at call
    time, so memoizing them for the duration of the conversion shares the work.
    Both are used read-only.  If a future version imports them differently this
    simply has no effect.
    """
    try:
        import gguf as gguf_package
    except ImportError:  # transformers will say that gguf is needed
        yield
        return
    names = ("GGUFReader", "get_tensor_name_map")
    with _GGUF_PATCH_LOCK:
        originals = {name: getattr(gguf_package, name, None) for name in names}
        for name, original in originals.items():
            if original is not None:
                setattr(gguf_package, name, functools.lru_cache(maxsize=4)(original))
        try:
            yield
        finally:
            for name, original in originals.items():
                if original is not None:
                    setattr(gguf_package, name, original)


def _dense_gguf_options() -> dict[str, Any]:
    """Ask for fully de-quantized weights, even where the `kernels` package could keep
    GGUF blocks packed: the cache is plain safetensors, and CPU float32 is the fast path.
    (transformers < 5 has no GgufConfig and always de-quantizes.)"""
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _convert_gguf(
    gguf: models.GGUFModel, progress: StatusFn | None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    with _reuse_gguf_parsing():
        report(progress, "loading tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(gguf.dir, gguf_file=gguf.name)
        report(progress, "de-quantizing GGUF")
        model = AutoModelForCausalLM.from_pretrained(
            gguf.dir, gguf_file=gguf.name, dtype=torch.float32, **_dense_gguf_options()
        )
    # The weights are plain float32 Linear layers now, but transformers keeps the GGUF
    # quantizer attached, which makes save_pretrained refuse; drop that marker.
    # transformers sets hf_quantizer at load time without declaring it, so mypy sees
    # torch's Module.__getattr__ type (Tensor | Module)
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def _save_cache(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, gguf_path: Path, target: Path
) -> None:
    """Write model + tokenizer to ``target`` atomically (temp dir, then rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{threading.get_ident()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)  # safetensors is the default format
        tokenizer.save_pretrained(tmp)
        marker = {"source": str(gguf_path.resolve()), "format": "safetensors float32"}
        (tmp / CACHE_MARKER).write_text(json.dumps(marker, indent=1))
        if target.exists():  # a stale or broken cache: replace it
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_gguf(
    gguf: models.GGUFModel, cache_dir: Path | None, progress: StatusFn | None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if cache_dir is None:
        return _convert_gguf(gguf, progress)
    cached = gguf_cache_dir(gguf.path, cache_dir)
    if _cache_is_complete(cached):
        report(progress, f"loading cached weights from {cached}")
        try:
            tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(cached)
            model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(
                cached, dtype=torch.float32
            )
            return model, tokenizer
        except (OSError, ValueError) as e:
            report(progress, f"cache unreadable ({e}); converting the GGUF again")
    model, tokenizer = _convert_gguf(gguf, progress)
    report(progress, f"saving cache to {cached}")
    try:
        _save_cache(model, tokenizer, gguf.path, cached)
    except OSError as e:  # a read-only or full disk costs speed next time, not this load
        report(progress, f"could not save the cache ({e}); continuing without it")
    return model, tokenizer
