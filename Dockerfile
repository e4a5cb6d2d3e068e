# GPU image for flow runs of a Prefect docker work pool: `sslpipe deploy --pool gpu-pool --image IMAGE`.
#
# Base: Python 3.11 (pyproject.toml requires >=3.11,<3.12). No CUDA base image is needed: torch==2.14.1 from PyPI
# (pinned in pyproject.toml) is a CUDA 13.0 build that brings CUDA, cuDNN and NCCL as pip packages (nvidia-*,
# cuda-toolkit). The host needs only an NVIDIA driver for CUDA 13.0 (580 or newer) and the NVIDIA Container Toolkit,
# which mounts the driver into a container started with a GPU device request (`docker run --gpus all`, or the work
# pool's `container_create_kwargs.device_requests`, see README).
#
# Build and push, from the repository root:
#   docker build -t registry.example.com/ssl-pipeline:gpu .
#   docker push registry.example.com/ssl-pipeline:gpu
# On the GPU machine (prefect-docker is needed by the worker, not in this image):
#   prefect work-pool create gpu-pool --type docker          # then set its GPU job variables (README)
#   pip install prefect-docker && prefect worker start --pool gpu-pool --type docker
#   cd /srv/my-project && sslpipe deploy --pool gpu-pool --image registry.example.com/ssl-pipeline:gpu --profile full
# The docker worker starts one container of this image per flow run with its own command (Prefect's flow-run engine)
# and mounts the workspace (params.yaml, data/, models/, mlflow/) at /workspace, the working directory below. So there
# is no ENTRYPOINT (it would be put in front of the worker's command); CMD only serves `docker run` by hand, e.g.
#   docker run --rm --gpus all -v "$PWD:/workspace" registry.example.com/ssl-pipeline:gpu sslpipe run --profile full
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    GX_ANALYTICS_ENABLED=false \
    MLFLOW_ENABLE_TELEMETRY=false \
    PREFECT_SERVER_ANALYTICS_ENABLED=false

# git: the register stage records the workspace's commit (the mounted folder belongs to another user, hence
# safe.directory); dataset-fashion-mnist: the default data source, so a run needs no download.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git dataset-fashion-mnist \
    && rm -rf /var/lib/apt/lists/* \
    && git config --system --add safe.directory '*'

WORKDIR /opt/ssl-pipeline
COPY pyproject.toml README.md ./
COPY ssl_components ssl_components
COPY flows flows
RUN pip install . && python -c "import torch, flows.pipeline; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# flows.deploy.CONTAINER_WORKDIR: where `sslpipe deploy --image` mounts the workspace
WORKDIR /workspace
CMD ["sslpipe", "--help"]
