"""What a ``[models] generator`` setting may name, and where a local one is on disk."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from node import models
from node.rag.generation.types import GenerationError

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


def resolve_local_spec(spec: str) -> tuple[models.GGUFModel | None, Path | None]:
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
