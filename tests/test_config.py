"""cluster.toml validation: every mistake names its key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import ConfigError, load, parse

ROOT = Path(__file__).parent.parent


def base() -> dict:
    return {
        "cluster": {"name": "t"},
        "nodes": [
            {
                "id": f"n{i}",
                "host": "127.0.0.1",
                "raft_port": 7100 + i,
                "gossip_port": 7200 + i,
                "api_port": 8100 + i,
                "dashboard_port": 8300 + i,
                "data_dir": f"d/n{i}",
            }
            for i in (1, 2, 3)
        ],
        "raft": {"tick_ms": 50},
    }


def test_the_launcher_restarts_on_failure_unless_told_never():
    assert parse(base(), Path("c.toml"), env={}).launcher.restart == "on-failure"
    never = parse(base(), Path("c.toml"), env={"RAGRAFT_RESTART": "never"})
    assert never.launcher.restart == "never"
    with pytest.raises(ConfigError, match="RAGRAFT_RESTART"):
        parse(base(), Path("c.toml"), env={"RAGRAFT_RESTART": "sometimes"})


def test_repository_cluster_toml_is_valid():
    config = load(ROOT / "cluster.toml", env={})
    assert [n.id for n in config.nodes] == ["n1", "n2", "n3"]
    assert config.raft.election_ticks > config.raft.heartbeat_ticks
    assert not config.curve_enabled


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda c: c["nodes"][1].update(raft_port=7101), "nodes[1].raft_port"),
        (lambda c: c["nodes"][2].update(id="n1"), "nodes[2].id"),
        (lambda c: c["nodes"][0].update(api_port=70000), "nodes[0].api_port"),
        (lambda c: c["nodes"][0].update(api_port="8101"), "nodes[0].api_port"),
        (lambda c: c["nodes"][0].update(colour="red"), "nodes[0].colour"),
        (lambda c: c["raft"].update(tick_ms=0), "raft.tick_ms"),
        (lambda c: c["raft"].update(election_ticks=1), "raft.election_ticks"),
        (lambda c: c["raft"].update(speed=3), "raft.speed"),
        (
            lambda c: c["cluster"].update(curve_public_key="x" * 40),
            "cluster.curve_public_key/curve_secret_key",
        ),
        (lambda c: c.pop("nodes"), "nodes"),
        (lambda c: c.update(security={"encryption_key": "not-base64!"}), "security.encryption_key"),
        (lambda c: c.update(security={"encryption_key": "c2hvcnQ="}), "security.encryption_key"),
        (lambda c: c["nodes"][0].update(slots=0), "nodes[0].slots"),
        (lambda c: c.update(models={"device": "tpu"}), "models.device"),
        (lambda c: c.update(models={"max_batch": 0}), "models.max_batch"),
        (lambda c: c.update(models={"load": "yes"}), "models.load"),
        (lambda c: c.update(models={"generator": ""}), "models.generator"),
        (lambda c: c.update(models={"embeddings": "x"}), "models.embeddings"),
        (lambda c: c.update(rag={"chunk_size": 10}), "rag.chunk_size"),
        (lambda c: c.update(rag={"chunk_size": 400, "chunk_overlap": 300}), "rag.chunk_overlap"),
        (lambda c: c.update(rag={"index": "ivf"}), "rag.index"),
        (lambda c: c.update(rag={"mode": "semantic"}), "rag.mode"),
        (lambda c: c.update(rag={"max_upload_mb": 100}), "rag.max_upload_mb"),
        (lambda c: c.update(launcher={"restart": "always"}), "launcher.restart"),
        (lambda c: c.update(launcher={"max_restarts": -1}), "launcher.max_restarts"),
        (lambda c: c.update(launcher={"max_restarts": True}), "launcher.max_restarts"),
        (lambda c: c.update(launcher={"backoff": 1}), "launcher.backoff"),
        (lambda c: c.update(launcher="on"), "launcher"),
    ],
)
def test_bad_values_name_their_key(mutate, key):
    raw = base()
    mutate(raw)
    with pytest.raises(ConfigError) as err:
        parse(raw, Path("cluster.toml"), env={})
    assert f"cluster.toml: {key}:" in str(err.value)
    assert ";" in str(err.value)  # problem; fix


def test_environment_overrides_secrets_and_tick():
    config = parse(
        base(),
        Path("c.toml"),
        env={
            "RAGRAFT_CLUSTER_PUBLIC_KEY": "p" * 40,
            "RAGRAFT_CLUSTER_SECRET_KEY": "s" * 40,
            "RAGRAFT_TICK_MS": "20",
        },
    )
    assert config.curve_enabled and config.curve_secret == "s" * 40
    assert config.raft.tick_ms == 20


def test_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="--config"):
        load(tmp_path / "nope.toml", env={})


def test_unknown_node_id_lists_the_known_ones():
    config = parse(base(), Path("c.toml"), env={})
    with pytest.raises(ConfigError, match="n1, n2, n3"):
        config.node("n9")


def test_model_and_data_settings_from_the_environment():
    config = parse(
        {**base(), "models": {"cache_dir": "cache"}},
        Path("/srv/c.toml"),
        env={
            "RAGRAFT_LOAD_MODELS": "0",
            "RAGRAFT_GENERATOR": "openai:http://x/v1#m",
            "RAGRAFT_DATA_DIR": "/data",
        },
    )
    assert not config.models.load
    assert config.models.generator == "openai:http://x/v1#m"
    assert config.models.cache_dir == Path("/srv/cache")  # relative to the file
    assert [n.data_dir for n in config.nodes] == [
        Path("/data/n1"),
        Path("/data/n2"),
        Path("/data/n3"),
    ]
    defaults = parse(base(), Path("c.toml"), env={})
    assert (
        defaults.models.load and defaults.models.cache_dir is None and defaults.rag.mode == "hybrid"
    )
