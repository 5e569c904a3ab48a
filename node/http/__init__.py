"""The REST API every node serves (aiohttp), and what it is made of.

tasks.py (/api/v1/tasks, /stats), kb.py (/api/v1/kb), auth.py (login, tokens, API
keys), users.py (/api/v1/users: roles, quotas, passwords), cluster.py
(/api/v1/cluster, /nodes, membership), openai_compat.py (the OpenAI-compatible /v1
routes), events.py (server-sent events), metrics.py (/metrics), openapi.py (the
OpenAPI document, generated from the vocabulary), errors.py (the JSON error format
and the one table from refusal codes to HTTP statuses), idempotency.py (the
Idempotency-Key header), body.py (reading a JSON body within bounds), throttle.py
(failed logins per name and address), app.py (the application).

May import: node.replica (commands, vocabulary, the Replica seam), node.config,
node.rag (searches), node.gossip (membership views).  Never consensus/ directly,
and nothing imports it but node/runtime.
"""
