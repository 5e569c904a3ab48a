"""JSON log lines carry the node, the message and the fields passed in `extra=`."""

from __future__ import annotations

import json
import logging

from node.logs import JsonFormatter


def test_json_lines_carry_node_task_and_event() -> None:
    record = logging.LogRecord(
        "ragraft.executor", logging.INFO, __file__, 1, "task %s completed", ("T1",), None
    )
    record.task_id, record.event, record.attempt = "T1", "task_complete", 2
    entry = json.loads(JsonFormatter("n2").format(record))
    assert (
        entry["node"] == "n2" and entry["level"] == "info" and entry["logger"] == "ragraft.executor"
    )
    assert entry["message"] == "task T1 completed"
    assert (entry["task_id"], entry["event"], entry["attempt"]) == ("T1", "task_complete", 2)
    assert entry["@timestamp"].endswith("Z")


def test_exceptions_become_a_structured_error() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    entry = json.loads(JsonFormatter("n1").format(record))
    assert entry["error"]["type"] == "ValueError" and "boom" in entry["error"]["stack"]
