"""Text generation backends: local transformers models and OpenAI-compatible servers.

A backend takes a *batch* of `GenRequest`s and returns one `GenResult` each, so a
node holding several generation tasks runs them together (one left-padded
``model.generate`` per group of requests that share sampling parameters).

* `TransformersBackend` runs a model in this process: the bundled
  SmolLM2-135M-Instruct GGUF (``bundled:SmolLM2-135M-Instruct``), any Hugging Face
  model directory, or any ``.gguf`` file.  GGUF files are de-quantized by
  transformers, which is slow (parsing the GGUF in Python dominates), so the
  converted weights and tokenizer are saved once as safetensors under a cache
  directory (the node's data dir) and read from there afterwards.  The cache holds
  model weights only, never user data.
* `OpenAIBackend` posts to ``{base_url}/chat/completions`` of a vLLM, Ollama or
  llama.cpp server, with the API key taken from the environment.

Generation is blocking; the node runtime calls it from a worker thread and passes
a ``cancelled()`` checkpoint that is polled every few tokens.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import hashlib
import json
import math
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypedDict

# OpenMP threads that spin while waiting collapse when the cores are shared: on 2
# busy cores, 2 spinning torch threads generated 2 tokens/s against 9 for passive
# waiting.  The runtime reads this when torch loads, so it only takes effect if
# nothing imported torch before this module (the node entry point should set it too).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)

from node import models

FinishReason = Literal["stop", "length", "cancelled"]
CancelledFn = Callable[[], bool]
ProgressFn = Callable[[str], None]

# How often (in generated tokens) a running batch polls its cancellation checkpoints.
CANCEL_CHECK_EVERY_TOKENS = 4
# Requests per model.generate call; bounds the KV-cache memory of one batch.
DEFAULT_MAX_BATCH_SIZE = 8

BUNDLED_PREFIX = "bundled:"
OPENAI_PREFIX = "openai:"
# Bundled generators by name -> locator returning the GGUF file (see node/models.py).
BUNDLED_GENERATORS: dict[str, Callable[[], models.GGUFModel]] = {
    "SmolLM2-135M-Instruct": models.generator_gguf,
}
SPEC_HELP = (
    "expected bundled:SmolLM2-135M-Instruct, a Hugging Face model directory, a .gguf file, "
    "or openai:<base_url>#<model>"
)
CACHE_MARKER = "ragraft-cache.json"


class ChatMessage(TypedDict):
    role: str  # "system" | "user" | "assistant"
    content: str


class GenerationError(RuntimeError):
    """Generation could not run; the message says why and, when it can, what to do."""


class PromptTooLongError(GenerationError, ValueError):
    """A prompt does not leave room for even one new token in the model's context."""


@dataclass(frozen=True)
class GenRequest:
    """One generation: either a raw ``prompt`` (completed as-is) or chat ``messages``.

    ``temperature == 0`` means greedy decoding.  ``stop`` strings end the output
    and are not part of it.  ``cancelled`` (optional) cancels this request alone;
    the batch-level checkpoint passed to ``generate`` cancels all of them.
    """

    prompt: str | None = None
    messages: tuple[ChatMessage, ...] | None = None
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    cancelled: CancelledFn | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("GenRequest needs exactly one of prompt or messages")
        if self.messages is not None:
            object.__setattr__(self, "messages", tuple(self.messages))
            if not self.messages:
                raise ValueError("GenRequest.messages is empty")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, not {self.max_new_tokens}")
        if not 0.0 <= self.temperature <= 5.0:
            raise ValueError(f"temperature must be within [0, 5], not {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be within (0, 1], not {self.top_p}")
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def sampling_key(self) -> tuple[Any, ...]:
        """Requests with equal keys can share one ``model.generate`` call."""
        if self.greedy:
            return ("greedy",)
        return ("sample", self.temperature, self.top_p, self.seed)


@dataclass(frozen=True)
class GenResult:
    """The output of one request.

    ``new_tokens`` counts the tokens the model produced for this request (a final
    end-of-sequence token included, padding excluded).  ``seconds`` is the wall time
    of the batch the request ran in, so tokens/s per task is ``new_tokens / seconds``.
    """

    text: str
    prompt_tokens: int
    new_tokens: int
    seconds: float
    finish_reason: FinishReason


class GenerationBackend(Protocol):
    """What the RAG engine needs from a generator."""

    @property
    def model_id(self) -> str: ...

    @property
    def context_tokens(self) -> int:
        """Prompt plus new tokens must fit in this many tokens."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` on its own (no special tokens); an estimate for remote models."""
        ...

    def generate(
        self, requests: list[GenRequest], cancelled: CancelledFn | None = None
    ) -> list[GenResult]:
        """Run a batch; results are in request order."""
        ...


def _report(progress: ProgressFn | None, message: str) -> None:
    if progress is not None:
        progress(message)


def _trim_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` at the earliest stop string; say whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


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
    gguf: models.GGUFModel, progress: ProgressFn | None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    with _reuse_gguf_parsing():
        _report(progress, "loading tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(gguf.dir, gguf_file=gguf.name)
        _report(progress, "de-quantizing GGUF")
        model = AutoModelForCausalLM.from_pretrained(
            gguf.dir, gguf_file=gguf.name, dtype=torch.float32, **_dense_gguf_options()
        )
    # The weights are plain float32 Linear layers now, but transformers keeps the GGUF
    # quantizer attached, which makes save_pretrained refuse; drop that marker.
    model.hf_quantizer = None
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


def _load_gguf(
    gguf: models.GGUFModel, cache_dir: Path | None, progress: ProgressFn | None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if cache_dir is None:
        return _convert_gguf(gguf, progress)
    cached = gguf_cache_dir(gguf.path, cache_dir)
    if _cache_is_complete(cached):
        _report(progress, f"loading cached weights from {cached}")
        try:
            tokenizer = AutoTokenizer.from_pretrained(cached)
            model = AutoModelForCausalLM.from_pretrained(cached, dtype=torch.float32)
            return model, tokenizer
        except (OSError, ValueError) as e:
            _report(progress, f"cache unreadable ({e}); converting the GGUF again")
    model, tokenizer = _convert_gguf(gguf, progress)
    _report(progress, f"saving cache to {cached}")
    try:
        _save_cache(model, tokenizer, gguf.path, cached)
    except OSError as e:  # a read-only or full disk costs speed next time, not this load
        _report(progress, f"could not save the cache ({e}); continuing without it")
    return model, tokenizer


class _FewRowsOutputHead(torch.nn.Module):
    """The vocabulary projection, computed as ``(W @ x.T).T`` when few rows come in.

    A decode step projects one hidden state per sequence onto the whole vocabulary
    (49152 x 576 for SmolLM2).  For 2-64 rows MKL's ``x @ W.T`` kernel is 1.6-3x
    slower than the transposed product on the 2-core AMD EPYC machines this runs
    on (4 rows: 31 ms against 14 ms), which took a fifth off every batched decode
    step (batch 4: ~130 ms -> ~110 ms).  One row is left to the usual kernel.  Same
    weights (tied embeddings stay tied), same result up to float rounding.
    """

    MAX_ROWS = 64  # beyond this the plain kernel catches up

    def __init__(self, head: torch.nn.Linear) -> None:
        super().__init__()
        self.weight = head.weight
        self.bias = head.bias
        self.in_features = head.in_features
        self.out_features = head.out_features

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        rows = hidden.reshape(-1, hidden.shape[-1])
        if not 2 <= rows.shape[0] <= self.MAX_ROWS:  # one row: both kernels are alike
            return torch.nn.functional.linear(hidden, self.weight, self.bias)
        logits = (self.weight @ rows.T).T
        if self.bias is not None:
            logits = logits + self.bias
        return logits.reshape(*hidden.shape[:-1], self.out_features)


def _speed_up_output_head(model: PreTrainedModel) -> None:
    head = model.get_output_embeddings()
    if type(head) is torch.nn.Linear and head.weight.device.type == "cpu":
        model.set_output_embeddings(_FewRowsOutputHead(head))


class _BatchMonitor(StoppingCriteria):
    """Per-row stop logic for one batched ``generate`` call.

    transformers asks every stopping criterion after each step; this one records,
    per row, at which step and why the row finished (end-of-sequence, a stop
    string, its own token limit, cancellation), so counts are exact despite the
    left padding and the pad tokens generate appends to finished rows.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompt_width: int,
        limits: list[int],
        stops: list[tuple[str, ...]],
        eos_ids: set[int],
        row_cancelled: list[CancelledFn | None],
        batch_cancelled: CancelledFn | None,
    ) -> None:
        self.tokenizer = tokenizer
        self.prompt_width = prompt_width
        self.limits = limits
        self.stops = stops
        self.eos_ids = eos_ids
        self.row_cancelled = row_cancelled
        self.batch_cancelled = batch_cancelled
        # A stop string of n characters spans at most 4n byte-level tokens.
        self.windows = [4 * max((len(s) for s in row), default=0) + 4 for row in stops]
        self.finished_at: list[int | None] = [None] * len(limits)
        self.reasons: list[FinishReason | None] = [None] * len(limits)

    def _finish(self, row: int, step: int, reason: FinishReason) -> None:
        self.finished_at[row] = step
        self.reasons[row] = reason

    def _hit_stop(self, ids: torch.Tensor, row: int) -> bool:
        start = max(self.prompt_width, ids.shape[0] - self.windows[row])
        tail = self.tokenizer.decode(ids[start:].tolist(), skip_special_tokens=True)
        return any(s in tail for s in self.stops[row])

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        step = input_ids.shape[1] - self.prompt_width  # tokens generated so far
        last_tokens = input_ids[:, -1].tolist()
        check_cancel = step % CANCEL_CHECK_EVERY_TOKENS == 0
        batch_cancel = check_cancel and self.batch_cancelled is not None and self.batch_cancelled()
        for row, token in enumerate(last_tokens):
            if self.finished_at[row] is not None:
                continue
            row_check = self.row_cancelled[row]
            if token in self.eos_ids or (self.stops[row] and self._hit_stop(input_ids[row], row)):
                self._finish(row, step, "stop")
            elif step >= self.limits[row]:
                self._finish(row, step, "length")
            elif batch_cancel or (check_cancel and row_check is not None and row_check()):
                self._finish(row, step, "cancelled")
        done = [f is not None for f in self.finished_at]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


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
        self.model = model.eval()
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
        progress: ProgressFn | None = None,
        context_tokens: int | None = None,
    ) -> TransformersBackend:
        """Load ``bundled:<name>``, a Hugging Face model directory or a ``.gguf`` file."""
        started = time.perf_counter()
        target = resolve_device(device)
        if target.type == "cpu":
            torch.set_num_threads(_usable_cores())
        gguf, hf_dir = _resolve_local_spec(spec)
        if gguf is not None:
            model, tokenizer = _load_gguf(gguf, cache_dir, progress)
            model_id = (
                gguf.path.stem.split(".")[0] if spec.startswith(BUNDLED_PREFIX) else gguf.name
            )
        else:
            assert hf_dir is not None
            _report(progress, "loading tokenizer")
            tokenizer = AutoTokenizer.from_pretrained(hf_dir)
            _report(progress, f"loading weights from {hf_dir}")
            model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=_dtype_for(target))
            model_id = hf_dir.name
        dtype = _dtype_for(target)
        if model.device != target or model.dtype != dtype:
            _report(progress, f"moving the model to {target} ({dtype})")
            model = model.to(device=target, dtype=dtype)
        tokenizer.padding_side = "left"
        if target.type == "cpu":
            _speed_up_output_head(model)  # after any save: the saved model stays standard
        backend = cls(model, tokenizer, model_id, context_tokens=context_tokens)
        _report(progress, f"ready in {time.perf_counter() - started:.1f} s")
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
            return self.tokenizer.apply_chat_template(
                [dict(m) for m in request.messages], add_generation_prompt=True, tokenize=False
            )
        return _plain_chat(request.messages)

    def encode(self, request: GenRequest) -> list[int]:
        """Prompt token ids of a request."""
        text = self.render(request)
        # A chat template already contains its special tokens; a raw prompt gets the
        # tokenizer's usual ones (e.g. BOS).
        return self.tokenizer(text, add_special_tokens=request.prompt is not None)["input_ids"]

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
        monitor = _BatchMonitor(
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
            text = self.tokenizer.decode(generated[row][:count], skip_special_tokens=True)
            text, stopped = _trim_at_stop(text, request.stop)
            if stopped and reason != "cancelled":
                reason = "stop"
            results.append(GenResult(text, len(encoded[row]), count, seconds, reason))
        return results


def _resolve_local_spec(spec: str) -> tuple[models.GGUFModel | None, Path | None]:
    """``(gguf, None)`` for GGUF specs, ``(None, dir)`` for Hugging Face directories."""
    if spec.startswith(BUNDLED_PREFIX):
        name = spec[len(BUNDLED_PREFIX) :]
        locate = BUNDLED_GENERATORS.get(name)
        if locate is None:
            known = ", ".join(BUNDLED_PREFIX + n for n in BUNDLED_GENERATORS)
            raise GenerationError(f"unknown bundled generator {spec!r}; bundled: {known}")
        return locate(), None  # raises ModelNotInstalledError with the install hint
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return models.GGUFModel(path.parent, path.name), None
    if path.is_dir():
        if (path / "config.json").is_file():
            return None, path
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return models.GGUFModel(path, ggufs[0].name), None
        raise GenerationError(
            f"{path} is neither a Hugging Face model directory (no config.json) nor holds "
            f"exactly one .gguf file ({len(ggufs)} found)"
        )
    raise GenerationError(f"generator {spec!r}: no such file or directory; {SPEC_HELP}")


# --------------------------------------------------------------------------- remote servers


class OpenAIBackend:
    """An OpenAI-compatible ``/chat/completions`` server (vLLM, Ollama, llama.cpp).

    Requests of a batch are sent concurrently (such servers batch them
    themselves).  Cancellation is checked while waiting: a cancelled call returns
    at once and its in-flight HTTP requests are abandoned (they end on the
    server's side or at ``timeout``).  Token counts come from the server's
    ``usage``; ``count_tokens`` is only an estimate, as the tokenizer is remote.
    """

    # Conservative characters-per-token for the estimate (English BPE is ~4).
    CHARS_PER_TOKEN = 3.0
    POLL_SECONDS = 0.1

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 120.0,
        context_tokens: int = 4096,
        max_concurrency: int = 4,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = timeout
        self._context_tokens = context_tokens
        self.max_concurrency = max_concurrency

    @property
    def model_id(self) -> str:
        return self.model

    @property
    def context_tokens(self) -> int:
        return self._context_tokens

    def count_tokens(self, text: str) -> int:
        return math.ceil(len(text) / self.CHARS_PER_TOKEN)

    def _payload(self, request: GenRequest) -> dict[str, Any]:
        messages = (
            [dict(m) for m in request.messages]
            if request.messages is not None
            else [{"role": "user", "content": request.prompt}]
        )
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": request.max_new_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "stream": False,
        }
        if request.stop:
            payload["stop"] = list(request.stop)
        if request.seed is not None:
            payload["seed"] = request.seed
        return payload

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.base_url}/chat/completions"
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        api_key = os.environ.get(self.api_key_env)
        if api_key:  # local servers usually need none
            headers["Authorization"] = f"Bearer {api_key}"
        req = urllib.request.Request(url, json.dumps(payload).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as e:
            raise GenerationError(
                f"the OpenAI-compatible server at {url} answered HTTP {e.code}: "
                f"{_server_message(e.read())}"
            ) from e
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                raise GenerationError(f"no answer from {url} within {self.timeout:g} s") from e
            raise GenerationError(
                f"cannot reach the OpenAI-compatible server at {url}: {e.reason}"
            ) from e
        except TimeoutError as e:
            raise GenerationError(f"no answer from {url} within {self.timeout:g} s") from e
        try:
            answer = json.loads(body)
        except ValueError as e:
            raise GenerationError(
                f"{url} answered with something that is not JSON: {body[:200]!r}"
            ) from e
        if not isinstance(answer, dict):
            raise GenerationError(f"{url} answered with unexpected JSON: {str(answer)[:200]}")
        return answer

    def _one(self, request: GenRequest) -> tuple[str, int | None, int | None, str | None]:
        answer = self._post(self._payload(request))
        try:
            choice = answer["choices"][0]
            text = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as e:
            raise GenerationError(
                f"{self.base_url}/chat/completions answered without choices[0].message.content: "
                f"{json.dumps(answer)[:200]}"
            ) from e
        usage = answer.get("usage") or {}
        return (
            text,
            usage.get("prompt_tokens"),
            usage.get("completion_tokens"),
            choice.get("finish_reason"),
        )

    def _result(
        self,
        request: GenRequest,
        outcome: tuple[str, int | None, int | None, str | None],
        seconds: float,
    ) -> GenResult:
        text, prompt_tokens, new_tokens, server_reason = outcome
        # Servers trim stop strings themselves; trimming again covers those that do not.
        text, stopped = _trim_at_stop(text, request.stop)
        reason: FinishReason = "length" if server_reason == "length" and not stopped else "stop"
        if prompt_tokens is None:
            prompt_tokens = sum(
                self.count_tokens(m["content"]) for m in self._payload(request)["messages"]
            )
        if new_tokens is None:
            new_tokens = self.count_tokens(text)
        return GenResult(text, int(prompt_tokens), int(new_tokens), seconds, reason)

    def generate(
        self, requests: list[GenRequest], cancelled: CancelledFn | None = None
    ) -> list[GenResult]:
        started = time.perf_counter()
        results: list[GenResult | None] = [None] * len(requests)

        def is_cancelled(i: int) -> bool:
            own = requests[i].cancelled
            return (cancelled is not None and cancelled()) or (own is not None and own())

        pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, min(self.max_concurrency, len(requests))),
            thread_name_prefix="openai-generate",
        )
        try:
            futures = {pool.submit(self._one, r): i for i, r in enumerate(requests)}
            pending = set(futures)
            while pending:
                done, pending = concurrent.futures.wait(
                    pending,
                    timeout=self.POLL_SECONDS,
                    return_when=concurrent.futures.FIRST_COMPLETED,
                )
                for future in done:
                    i = futures[future]
                    results[i] = self._result(
                        requests[i], future.result(), time.perf_counter() - started
                    )
                for future in list(pending):
                    i = futures[future]
                    if is_cancelled(i):
                        future.cancel()
                        pending.discard(future)
                        results[i] = GenResult("", 0, 0, time.perf_counter() - started, "cancelled")
        finally:
            # Do not wait for abandoned requests; they end at the server or at the timeout.
            pool.shutdown(wait=False, cancel_futures=True)
        return [r for r in results if r is not None]


def _server_message(body: bytes) -> str:
    """The error text of an OpenAI-style (``{"error": {"message"}}``) or Ollama-style body."""
    text = body.decode("utf-8", "replace").strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        return text[:500] or "(empty body)"
    if isinstance(parsed, dict):
        error = parsed.get("error", parsed.get("detail", parsed.get("message")))
        if isinstance(error, dict):
            error = error.get("message", error)
        if error:
            return str(error)[:500]
    return text[:500]


# --------------------------------------------------------------------------- selection


def load_backend(
    spec: str,
    cache_dir: Path | None = None,
    device: str = "auto",
    progress: ProgressFn | None = None,
    context_tokens: int | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    timeout: float = 120.0,
) -> GenerationBackend:
    """The backend a ``[models] generator`` setting names.

    ``openai:<base_url>#<model>`` selects a server, e.g.
    ``openai:http://localhost:11434/v1#llama3.2`` for Ollama; anything else is a
    local model (see `TransformersBackend.load`).
    """
    if spec.startswith(OPENAI_PREFIX):
        base_url, sep, model = spec[len(OPENAI_PREFIX) :].partition("#")
        if not sep or not base_url or not model:
            raise GenerationError(
                f"generator {spec!r}: write openai:<base_url>#<model>, "
                "e.g. openai:http://localhost:8000/v1#Qwen/Qwen2.5-7B-Instruct"
            )
        backend = OpenAIBackend(
            base_url,
            model,
            api_key_env=api_key_env,
            timeout=timeout,
            context_tokens=context_tokens or 4096,
        )
        _report(progress, f"using the OpenAI-compatible server at {backend.base_url} ({model})")
        return backend
    return TransformersBackend.load(
        spec, cache_dir=cache_dir, device=device, progress=progress, context_tokens=context_tokens
    )
