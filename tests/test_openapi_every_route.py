"""schemathesis over the routes the main run (tests/test_openapi.py) leaves out because
they take a cluster apart or never end: membership changes, join tokens and joins,
drains, users, the chat route and the event stream, against a throw-away cluster with
the bundled models.  No server error: a 503 is allowed only with its documented code
(no quorum or no leader once the run has taken members away)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.nodecluster import NodeCluster, running_cluster

ROOT = Path(__file__).parent.parent
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeCluster]:
    with running_cluster(tmp_path_factory.mktemp("every-route"), models=True) as cluster:
        yield cluster


@pytest.mark.timeout(900)
def test_schemathesis_over_membership_joins_users_chat_and_events(cluster: NodeCluster) -> None:
    env = {
        **cluster.env,
        "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            cluster.api["n1"] + "/openapi.json",
            "-H",
            f"Authorization: Bearer {cluster.admin_token()}",
            "--checks",
            (
                "unavailable_is_not_a_server_error,status_code_conformance,"
                "content_type_conformance,response_schema_conformance"
            ),
            "--include-path-regex",
            "/cluster/members|/cluster/join|/drain|/resume|/users|/events|/v1/chat|/v1/models",
            # Not the coverage phase: its boundary values include max_s at its maximum,
            # a day-long stream; the fuzzing phase's events are bounded by the hook.
            "--phases",
            "examples,fuzzing,stateful",
            "--max-examples",
            "60",
            "--workers",
            "1",
            "--seed",
            "11",
            # adding a member waits up to 60 s for it to catch up
            "--request-timeout",
            "120",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=cluster.root,
        env=env,
    )
    report = ROOT / "artifacts" / "schemathesis" / "every-route.txt"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(run.stdout)
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    assert "API Operations" in run.stdout
    # every selected operation was exercised, and cases were many
    tested = re.search(r"Tested:\s+(\d+)", run.stdout)
    cases = re.search(r"(\d+) generated", run.stdout)
    assert tested and int(tested.group(1)) >= 13, run.stdout[-3000:]
    assert cases and int(cases.group(1)) >= 500, run.stdout[-3000:]
