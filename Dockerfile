# The operator image. BASE is a Python 3.11+ image; on machines without a registry build it with
# buildah from a local base (see docs/local-cluster.md). Wheels are pre-downloaded into ./wheels
# because builds here cannot reach the package index from inside the build.
ARG BASE=python:3.11-slim
FROM ${BASE}
WORKDIR /app
COPY wheels/ /wheels/
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN python3 -m venv /venv \
 && /venv/bin/pip install --no-index --find-links /wheels . \
 && rm -rf /wheels
USER 65532:65532
ENTRYPOINT ["/venv/bin/kloop-operator"]
