# MaRI Serve: CPU-only ranking service image.
#
#   docker build -t mari-serve .                        # the service (last stage, the default target)
#   docker build --target loadtest -t mari-serve-loadtest .   # same venv + locust, for loadtest/locustfile.py
#
# Stages: python-base (shared settings) -> builder (venv, CPU torch, the package, the default model trained
# into /app/model_store) -> loadtest | runtime (venv + model store only; no compiler, no pip cache, non-root).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS python-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
WORKDIR /app


FROM python-base AS builder
ARG TORCH_VERSION=2.13.0
# Where torch comes from, as pip options: PyTorch's CPU index by default. Offline, a directory holding the
# +cpu wheel mounted into the build, the version pinned to it (deploy/image/build.sh; `podman build -v DIR:/wheels:ro`):
#   --build-arg TORCH_VERSION=2.13.0+cpu --build-arg TORCH_PIP_ARGS="--find-links /wheels"
ARG TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
RUN python -m venv /opt/venv
# torch first, so no later requirement pulls a CUDA wheel (a few GB larger); the check refuses one that came
# anyway (torch.version.cuda set, or no +cpu), before anything else is installed.
RUN pip install torch==${TORCH_VERSION} ${TORCH_PIP_ARGS}
COPY deploy/image/check_cpu_torch.py /opt/check_cpu_torch.py
RUN python /opt/check_cpu_torch.py
# README.m[d]: copied when present (pyproject names it as the readme) without failing when it is not.
COPY pyproject.toml README.m[d] ./
COPY service ./service
# [torchrec-serving]: fbgemm-gpu-cpu, whose operators a packaged torchrec model's program calls. Checked
# again: nothing installed after torch may replace it.
RUN pip install '.[torchrec-serving]' && python /opt/check_cpu_torch.py
# The default model is part of the image; a volume mounted on /app/model_store replaces or extends it.
# TRAIN_ARGS: more `ranker train` options, e.g. "--steps 20" for a quick build that only checks the image
# (deploy/image/; the model is then barely trained).
ARG TRAIN_ARGS=""
RUN ranker train --arch mmoe --name default --store /app/model_store ${TRAIN_ARGS}


FROM python-base AS loadtest
RUN useradd --create-home --uid 10001 --user-group locust
COPY --from=builder /opt/venv /opt/venv
RUN pip install "locust>=2.24"
COPY loadtest ./loadtest
USER locust
EXPOSE 8089
ENTRYPOINT ["locust"]
CMD ["-f", "/app/loadtest/locustfile.py"]


FROM python-base AS runtime
LABEL org.opencontainers.image.title="mari-serve" \
      org.opencontainers.image.description="Online ranking inference (VanI, UOI, MaRI) on CPU torch"
RUN useradd --create-home --uid 10001 --user-group ranker
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder --chown=ranker:ranker /app/model_store /app/model_store

# `ranker serve` takes host, port and workers as flags; the CMD reads them from these variables.
# Every other setting is a RANKER_* field of service/serving/settings.py:Settings (e.g. RANKER_VARIANT,
# RANKER_SHADOW_VARIANT, RANKER_ADMIN_TOKEN). Keep RANKER_WORKERS x RANKER_TORCH_THREADS <= the container's CPUs.
# With RANKER_WORKERS > 1, `ranker serve` creates a fresh PROMETHEUS_MULTIPROC_DIR under /tmp itself.
ENV RANKER_HOST=0.0.0.0 \
    RANKER_PORT=8000 \
    RANKER_WORKERS=1 \
    RANKER_TORCH_THREADS=2 \
    RANKER_INFERENCE_CONCURRENCY=1 \
    RANKER_MODEL_STORE=/app/model_store \
    RANKER_MODEL_NAME=default
VOLUME ["/app/model_store"]
USER ranker
EXPOSE 8000
# Liveness only: /readyz (model built and warmed) is what a load balancer should route on.
# start-period covers loading, tracing the three variants and the warm-up.
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:' + os.environ['RANKER_PORT'] + '/healthz', timeout=2).status != 200)"]
# exec: `ranker` replaces the shell as PID 1, so `docker stop`'s SIGTERM reaches uvicorn (graceful shutdown).
CMD ["sh", "-c", "exec ranker serve --host \"$RANKER_HOST\" --port \"$RANKER_PORT\" --workers \"$RANKER_WORKERS\""]
