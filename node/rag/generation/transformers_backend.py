"""`TransformersBackend`: a causal LM running in this process.

The bundled SmolLM2-135M-Instruct GGUF (``bundled:SmolLM2-135M-Instruct``), any
Hugging Face model directory, or any ``.gguf`` file (converted once, see gguf.py).
Requests that share sampling parameters run as one left-padded ``model.generate``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteriaList,
)

from node.rag.generation.gguf import load_gguf
from node.rag.generation.output_head import speed_up_output_head
from node.rag.generation.specs import BUNDLED_PREFIX, resolve_local_spec
from node.rag.generation.stopping import BatchMonitor
from node.rag.generation.types import (
    ChatMessage,
    GenerationError,
    GenRequest,
    GenResult,
    PromptTooLongError,
    StatusFn,
    report,
    trim_at_stop,
)
from node.replica.vocabulary import CancelledFn

# Requests per model.generate call; bounds the KV-cache memory of one batch.
DEFAULT_MAX_BATCH_SIZE = 8


def _plain_chat(messages: Sequence[ChatMessage]) -> str:
    """A prompt for models without a chat template (base models)."""
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join(lines) + "\n\nAssistant:"


# --------------------------------------------------------------------------- local models


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; an explicit CUDA device must exist."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise GenerationError(f"device {device!r} asked for, but torch sees no CUDA device")
    return resolved


def _dtype_for(device: torch.device) -> torch.dtype:
    # Half precision only pays off on GPUs; CPU matmuls are fastest (and exact) in float32.
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _usable_cores() -> int:
    # The affinity mask respects cgroup/taskset limits, which os.cpu_count() ignores.
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


class TransformersBackend:
    """A causal LM running in this process; thread-safe (one batch at a time)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        model_id: str,
        context_tokens: int | None = None,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    ) -> None:
        # PreTrainedModel.eval is unannotated (it returns the model itself)
        self.model = model.eval()  # type: ignore[no-untyped-call]
        self.tokenizer = tokenizer
        self._model_id = model_id
        self.device = next(model.parameters()).device
        self.max_batch_size = max_batch_size
        self._lock = threading.Lock()
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.pad_id: int = tokenizer.pad_token_id
        self.eos_ids = self._eos_ids()
        self._context_tokens = context_tokens or self._model_context()
        self._chat = bool(getattr(tokenizer, "chat_template", None))

    # ---- construction

    @classmethod
    def load(
        cls,
        spec: str,
        cache_dir: Path | None = None,
        device: str = "auto",
        progress: StatusFn | None = None,
        context_tokens: int | None = None,
    ) -> TransformersBackend:
        """Load ``bundled:<name>``, a Hugging Face model directory or a ``.gguf`` file."""
        started = time.perf_counter()
        target = resolve_device(device)
        if target.type == "cpu":
            torch.set_num_threads(_usable_cores())
        gguf, hf_dir = resolve_local_spec(spec)
        if gguf is not None:
            model, tokenizer = load_gguf(gguf, cache_dir, progress)
            model_id = (
                gguf.path.stem.split(".")[0] if spec.startswith(BUNDLED_PREFIX) else gguf.name
            )
        else:
            assert hf_dir is not None
            report(progress, "loading tokenizer")
            tokenizer = AutoTokenizer.from_pretrained(hf_dir)
            report(progress, f"loading weights from {hf_dir}")
            model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=_dtype_for(target))
            model_id = hf_dir.name
        dtype = _dtype_for(target)
        if model.device != target or model.dtype != dtype:
            report(progress, f"moving the model to {target} ({dtype})")
            # functools.wraps on PreTrainedModel.to hides `self` from mypy
            model = model.to(device=target, dtype=dtype)  # type: ignore[call-arg]
        tokenizer.padding_side = "left"
        if target.type == "cpu":
            speed_up_output_head(model)  # after any save: the saved model stays standard
        backend = cls(model, tokenizer, model_id, context_tokens=context_tokens)
        report(progress, f"ready in {time.perf_counter() - started:.1f} s")
        return backend

    def _eos_ids(self) -> set[int]:
        # Chat models often end a turn with a token other than the tokenizer's eos
        # (Llama 3's <|eot_id|>); the generation config lists them all.
        ids: set[int] = set()
        configured = self.model.generation_config.eos_token_id
        if isinstance(configured, int):
            ids.add(configured)
        elif configured:
            ids.update(configured)
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    def _model_context(self) -> int:
        limits = [getattr(self.model.config, "max_position_embeddings", None)]
        tokenizer_limit = getattr(self.tokenizer, "model_max_length", None)
        if tokenizer_limit and tokenizer_limit < 10**7:  # huge values mean "unset"
            limits.append(tokenizer_limit)
        known = [n for n in limits if n]
        return min(known) if known else 2048

    # ---- GenerationBackend

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def context_tokens(self) -> int:
        return self._context_tokens

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def render(self, request: GenRequest) -> str:
        """The exact text the model sees for a request (chat template applied)."""
        if request.prompt is not None:
            return request.prompt
        assert request.messages is not None
        if self._chat:
            # ChatMessage holds str values only; transformers types the argument as such
            conversation = cast(list[dict[str, str]], [dict(m) for m in request.messages])
            rendered = self.tokenizer.apply_chat_template(
                conversation, add_generation_prompt=True, tokenize=False
            )
            return cast(str, rendered)  # tokenize=False on one conversation: the text
        return _plain_chat(request.messages)

    def encode(self, request: GenRequest) -> list[int]:
        """Prompt token ids of a request."""
        text = self.render(request)
        # A chat template already contains its special tokens; a raw prompt gets the
        # tokenizer's usual ones (e.g. BOS).
        encoding = self.tokenizer(text, add_special_tokens=request.prompt is not None)
        ids: list[int] = encoding["input_ids"]
        return ids

    def count_request_tokens(self, request: GenRequest) -> int:
        return len(self.encode(request))

    def generate(
        self, requests: list[GenRequest], cancelled: CancelledFn | None = None
    ) -> list[GenResult]:
        encoded = [self.encode(r) for r in requests]
        for i, ids in enumerate(encoded):
            if len(ids) >= self.context_tokens:
                raise PromptTooLongError(
                    f"request {i}: the prompt has {len(ids)} tokens but {self.model_id} holds "
                    f"{self.context_tokens}; shorten it (fewer or shorter passages)"
                )
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(r.sampling_key(), []).append(i)
        results: list[GenResult | None] = [None] * len(requests)
        with self._lock, torch.inference_mode():
            for members in groups.values():
                for start in range(0, len(members), self.max_batch_size):
                    batch = members[start : start + self.max_batch_size]
                    outcome = self._run_batch(
                        [requests[i] for i in batch], [encoded[i] for i in batch], cancelled
                    )
                    for i, result in zip(batch, outcome, strict=True):
                        results[i] = result
        return [r for r in results if r is not None]

    def _run_batch(
        self, requests: list[GenRequest], encoded: list[list[int]], cancelled: CancelledFn | None
    ) -> list[GenResult]:
        started = time.perf_counter()
        if (cancelled is not None and cancelled()) or all(
            r.cancelled is not None and r.cancelled() for r in requests
        ):
            return [GenResult("", len(ids), 0, 0.0, "cancelled") for ids in encoded]
        width = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):  # left padding: prompts end where generation starts
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
        limits = [
            min(r.max_new_tokens, self.context_tokens - len(ids))
            for r, ids in zip(requests, encoded, strict=True)
        ]
        monitor = BatchMonitor(
            self.tokenizer,
            prompt_width=width,
            limits=limits,
            stops=[r.stop for r in requests],
            eos_ids=self.eos_ids,
            row_cancelled=[r.cancelled for r in requests],
            batch_cancelled=cancelled,
        )
        first = requests[0]
        sampling: dict[str, Any] = (
            {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
            if first.greedy
            # OpenAI semantics: no top-k cut unless asked, unlike transformers' default of 50.
            else {
                "do_sample": True,
                "temperature": first.temperature,
                "top_p": first.top_p,
                "top_k": 0,
            }
        )
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            if first.seed is not None and not first.greedy:
                torch.manual_seed(first.seed)
            output = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                max_new_tokens=max(limits),
                stopping_criteria=StoppingCriteriaList([monitor]),
                pad_token_id=self.pad_id,
                eos_token_id=sorted(self.eos_ids),
                **sampling,
            )
        seconds = time.perf_counter() - started
        generated = output[:, width:].tolist()
        results: list[GenResult] = []
        for row, request in enumerate(requests):
            count = monitor.finished_at[row]
            reason = monitor.reasons[row]
            if count is None or reason is None:  # ended by one of generate's own limits
                count, reason = len(generated[row]), "length"
            # one sequence of ids decodes to one str (a batch of them would give a list)
            text = cast(
                str, self.tokenizer.decode(generated[row][:count], skip_special_tokens=True)
            )
            text, stopped = trim_at_stop(text, request.stop)
            if stopped and reason != "cancelled":
                reason = "stop"
            results.append(GenResult(text, len(encoded[row]), count, seconds, reason))
        return results
