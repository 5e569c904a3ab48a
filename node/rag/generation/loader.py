"""`load_backend`: the backend a ``[models] generator`` setting names."""

from __future__ import annotations

from pathlib import Path

from node.rag.generation.openai_backend import OpenAIBackend
from node.rag.generation.specs import OPENAI_PREFIX
from node.rag.generation.transformers_backend import TransformersBackend
from node.rag.generation.types import (
    GenerationBackend,
    GenerationError,
    StatusFn,
    report,
)


def load_backend(
    spec: str,
    cache_dir: Path | None = None,
    device: str = "auto",
    progress: StatusFn | None = None,
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
        report(progress, f"using the OpenAI-compatible server at {backend.base_url} ({model})")
        return backend
    return TransformersBackend.load(
        spec, cache_dir=cache_dir, device=device, progress=progress, context_tokens=context_tokens
    )
