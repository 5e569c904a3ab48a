"""A cluster described only by the environment (containers, Kubernetes), and the
split between where a node listens, where the others dial it and what clients are
told."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import ConfigError, load, parse

NODES = "n1=10.0.0.1,n2=10.0.0.2,n3=10.0.0.3"


def test_no_file_is_needed_when_the_environment_lists_the_nodes(tmp_path: Path) -> None:
    config = load(
        tmp_path / "missing.toml",
        env={"RAGRAFT_NODES": NODES, "RAGRAFT_CLUSTER_NAME": "prod", "RAGRAFT_API_PORT": "9100"},
    )
    assert config.name == "prod"
    assert [(n.id, n.host, n.join) for n in config.nodes] == [
        ("n1", "10.0.0.1", False),
        ("n2", "10.0.0.2", False),
        ("n3", "10.0.0.3", False),
    ]
    n2 = config.node("n2")
    assert n2.raft_address == "tcp://10.0.0.2:7100"
    assert n2.gossip_address == "tcp://10.0.0.2:7200"
    assert n2.api_url == "http://10.0.0.2:9100"
    assert n2.public_api_url == n2.api_url  # nothing published apart: clients use the same


def test_without_the_nodes_a_missing_file_says_both_ways_out(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="RAGRAFT_NODES"):
        load(tmp_path / "missing.toml", env={})


def test_a_node_not_listed_joins_with_the_host_it_is_given(tmp_path: Path) -> None:
    env = {"RAGRAFT_NODES": NODES, "RAGRAFT_NODE_ID": "n4", "RAGRAFT_HOST": "10.0.0.4"}
    config = load(tmp_path / "missing.toml", env=env)
    n4 = config.node("n4")
    assert n4.join and n4.raft_address == "tcp://10.0.0.4:7100"
    assert [n.id for n in config.nodes if not n.join] == ["n1", "n2", "n3"]
    # Without its host it is not made up: the error says what to set.
    env.pop("RAGRAFT_HOST")
    config = load(tmp_path / "missing.toml", env=env)
    with pytest.raises(ConfigError, match="RAGRAFT_HOST"):
        config.node("n4")


def test_bind_and_published_addresses_are_apart_from_the_dialled_one(tmp_path: Path) -> None:
    env = {
        "RAGRAFT_NODES": NODES,
        "RAGRAFT_NODE_ID": "n1",
        "RAGRAFT_BIND_HOST": "0.0.0.0",
        "RAGRAFT_API_URL": "https://ragraft.example.com:443/",
        "RAGRAFT_DASHBOARD_URL": "https://dash.example.com",
    }
    config = load(tmp_path / "missing.toml", env=env)
    n1, n2 = config.node("n1"), config.node("n2")
    assert n1.raft_bind_address == "tcp://0.0.0.0:7100"
    assert n1.raft_address == "tcp://10.0.0.1:7100"  # what the membership records
    assert n1.gossip_bind_address == "tcp://0.0.0.0:7200"
    assert n1.local_api_url == "http://127.0.0.1:8100"  # its dashboard reaches it here
    assert n1.public_api_url == "https://ragraft.example.com:443"
    assert n1.public_dashboard_url == "https://dash.example.com"
    assert n1.api_url == "http://10.0.0.1:8100"  # the other nodes still dial the host
    assert n2.published_api_url is None  # another node's published URL is its own to say


def test_the_file_takes_the_same_keys_per_node() -> None:
    raw = {
        "nodes": [
            {
                "id": "a",
                "host": "a.internal",
                "bind_host": "0.0.0.0",
                "api_url": "http://localhost:8101",
                "dashboard_url": "http://localhost:8301",
                "raft_port": 7100,
                "gossip_port": 7200,
                "api_port": 8100,
                "dashboard_port": 8300,
            }
        ]
    }
    (a,) = parse(raw, Path("c.toml"), env={}).nodes
    assert (a.listen_host, a.host, a.public_api_url) == (
        "0.0.0.0",
        "a.internal",
        "http://localhost:8101",
    )


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"RAGRAFT_NODES": "n1"}, "RAGRAFT_NODES: 'n1' is not id=host"),
        ({"RAGRAFT_NODES": NODES, "RAGRAFT_RAFT_PORT": "x"}, "RAGRAFT_RAFT_PORT"),
        ({"RAGRAFT_NODES": NODES, "RAGRAFT_API_URL": "http://x"}, "RAGRAFT_NODE_ID"),
        (
            {"RAGRAFT_NODES": NODES, "RAGRAFT_NODE_ID": "n1", "RAGRAFT_API_URL": "ftp://x"},
            "api_url",
        ),
        (
            {"RAGRAFT_NODES": NODES, "RAGRAFT_NODE_ID": "n1", "RAGRAFT_HOST": "10.9.9.9"},
            "RAGRAFT_HOST",
        ),
        ({"RAGRAFT_NODES": "n1=0.0.0.0"}, "wildcard"),
        ({"RAGRAFT_NODES": "n1=a,n1=b"}, "already used"),
    ],
)
def test_bad_environment_is_named(tmp_path: Path, env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        load(tmp_path / "missing.toml", env=env)


def test_a_dashboard_offers_the_nodes_gossip_knows_besides_the_configured() -> None:
    from node.runtime.main import peer_dashboards

    config = load(Path("/nonexistent/cluster.toml"), env={"RAGRAFT_NODES": NODES})
    members = {
        "n1": {"status": "alive", "meta": {"dashboard_url": "http://self"}},
        "n2": {"status": "alive", "meta": {"dashboard_url": "http://elsewhere:1"}},
        "n4": {"status": "alive", "meta": {"dashboard_url": "http://10.0.0.4:8300"}},
        "n5": {"status": "dead", "meta": {"dashboard_url": "http://10.0.0.5:8300"}},
    }
    assert peer_dashboards(config, "n1", members) == {
        "n2": "http://elsewhere:1",  # what it publishes: a browser's way in
        "n3": "http://10.0.0.3:8300",  # not heard of yet: as configured
        "n4": "http://10.0.0.4:8300",  # joined later: known from gossip
    }
