"""The official `openai` client against a real node's OpenAI-compatible routes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import aiohttp
import openai
import pytest

from tests.nodecluster import NodeCluster, add_text_document, running_cluster

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeCluster]:
    with running_cluster(tmp_path_factory.mktemp("openai"), models=True) as cluster:
        add_text_document(
            cluster, "Lighthouses", "The lighthouse keeper polishes the great lens every Tuesday."
        )
        yield cluster


def client(cluster: NodeCluster, node: str = "n2") -> openai.OpenAI:
    return openai.OpenAI(
        base_url=cluster.api[node] + "/v1", api_key=cluster.admin_token(), max_retries=0
    )


def test_models_and_a_chat_completion_answered_through_the_queue(cluster: NodeCluster) -> None:
    api = client(cluster)
    assert {m.id for m in api.models.list()} == {"ragraft-qa", "ragraft-generate"}
    answer = api.chat.completions.create(
        model="ragraft-qa",
        max_tokens=24,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What does the lighthouse keeper polish?"},
        ],
    )
    assert (
        answer.choices[0].message.role == "assistant" and answer.choices[0].message.content.strip()
    )
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert 0 < answer.usage.completion_tokens <= 24 and answer.usage.prompt_tokens > 10
    extra = answer.model_extra["ragraft"]
    assert "lens" in extra["passages"][0]["text"]
    task = cluster.request("n3", "GET", f"/api/v1/tasks/{extra['task_id']}")[
        1
    ]  # a real task of the queue
    assert task["type"] == "qa" and task["state"] == "completed" and task["owner"] == "admin"


def test_streaming(cluster: NodeCluster) -> None:
    chunks = list(
        client(cluster, "n3").chat.completions.create(
            model="ragraft-generate",
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "Say hello to the sea."}],
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].choices[0].delta.role == "assistant" and text.strip()
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 12


def test_errors_in_openai_format(cluster: NodeCluster) -> None:
    api = client(cluster)
    with pytest.raises(openai.NotFoundError) as err:
        api.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert "ragraft-qa" in str(err.value)
    with pytest.raises(openai.BadRequestError):
        api.chat.completions.create(
            model="ragraft-qa", messages=[{"role": "system", "content": "no user turn"}]
        )
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url=cluster.api["n1"] + "/v1", api_key="wrong", max_retries=0
        ).models.list()


def test_a_client_that_goes_away_cancels_its_task(cluster: NodeCluster) -> None:
    async def start_and_leave() -> None:
        async with aiohttp.ClientSession() as session:
            try:
                await session.post(
                    cluster.api["n1"] + "/v1/chat/completions",
                    timeout=aiohttp.ClientTimeout(total=2),
                    headers={"Authorization": f"Bearer {cluster.admin_token()}"},
                    json={
                        "model": "ragraft-generate",
                        "max_tokens": 2000,
                        "messages": [{"role": "user", "content": "Write a very long story."}],
                    },
                )
            except TimeoutError:
                pass

    asyncio.run(start_and_leave())
    deadline = time.monotonic() + 20
    while True:
        items = cluster.request("n1", "GET", "/api/v1/tasks?type=generate&sort=-submitted&limit=1")[
            1
        ]["items"]
        if items and items[0]["state"] == "cancelled":
            break
        assert time.monotonic() < deadline, items
        time.sleep(0.3)
