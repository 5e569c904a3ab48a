"""Text generation backends: local transformers models and OpenAI-compatible servers.

A backend takes a *batch* of `GenRequest`s and returns one `GenResult` each, so a
node holding several generation tasks runs them together (one left-padded
``model.generate`` per group of requests that share sampling parameters).
Generation is blocking; the node runtime calls it from a worker thread and passes
a ``cancelled()`` checkpoint that is polled every few tokens.

What lives here (import the names from this package, not from the modules):
- types.py: `GenRequest`, `GenResult`, `ChatMessage`, the `GenerationBackend`
  protocol, `GenerationError` and `PromptTooLongError`.
- specs.py: what a ``[models] generator`` setting may name (``bundled:<name>``,
  a Hugging Face directory, a ``.gguf`` file, ``openai:<base_url>#<model>``).
- gguf.py: GGUF conversion and its safetensors cache under the node's data dir
  (model weights only, never user data).
- output_head.py: a faster CPU vocabulary projection for small decode batches.
- stopping.py: per-row stop, length and cancellation logic of one batch.
- transformers_backend.py: `TransformersBackend`, a model in this process.
- openai_backend.py: `OpenAIBackend`, a vLLM, Ollama or llama.cpp server.
- loader.py: `load_backend`, which picks one of the two from a setting.
"""

import os

# OpenMP threads that spin while waiting collapse when the cores are shared: on 2
# busy cores, 2 spinning torch threads generated 2 tokens/s against 9 for passive
# waiting.  The runtime reads this when torch loads, so it only takes effect if
# nothing imported torch before this package (the node entry point sets it too).
# It is set here, before the modules below import torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from node.rag.generation.gguf import CACHE_MARKER, gguf_cache_dir
from node.rag.generation.loader import load_backend
from node.rag.generation.openai_backend import OpenAIBackend
from node.rag.generation.specs import (
    BUNDLED_GENERATORS,
    BUNDLED_PREFIX,
    OPENAI_PREFIX,
    SPEC_HELP,
)
from node.rag.generation.stopping import CANCEL_CHECK_EVERY_TOKENS
from node.rag.generation.transformers_backend import (
    DEFAULT_MAX_BATCH_SIZE,
    TransformersBackend,
    resolve_device,
)
from node.rag.generation.types import (
    ChatMessage,
    FinishReason,
    GenerationBackend,
    GenerationError,
    GenRequest,
    GenResult,
    PromptTooLongError,
    StatusFn,
)
from node.replica.vocabulary import CancelledFn

__all__ = [
    "BUNDLED_GENERATORS",
    "BUNDLED_PREFIX",
    "CACHE_MARKER",
    "CANCEL_CHECK_EVERY_TOKENS",
    "DEFAULT_MAX_BATCH_SIZE",
    "OPENAI_PREFIX",
    "SPEC_HELP",
    "CancelledFn",
    "ChatMessage",
    "FinishReason",
    "GenRequest",
    "GenResult",
    "GenerationBackend",
    "GenerationError",
    "OpenAIBackend",
    "PromptTooLongError",
    "StatusFn",
    "TransformersBackend",
    "gguf_cache_dir",
    "load_backend",
    "resolve_device",
]
