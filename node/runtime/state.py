"""A node's replicated state as it is before the log or a snapshot fills it: the
task queue with the cluster's retry policy and the knowledge base with its index
kind.  Made here for a running node (node/runtime/main.py) and for `ragraft
restore`, which loads a backup into it to check it before seeding a new cluster."""

from __future__ import annotations

from node.config import ClusterConfig
from node.rag.knowledge import KnowledgeBase
from node.replica.state import NodeState
from node.replica.tasks import RetryPolicy, TaskQueue


def new_state(config: ClusterConfig) -> NodeState:
    settings = config.tasks
    tasks = TaskQueue(RetryPolicy(settings.max_attempts, settings.retry_backoff_ms))
    return NodeState(tasks, KnowledgeBase(index_kind=config.rag.index))
