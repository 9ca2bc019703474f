# The web demo as a container: `docker build -t densecap-jax .` then
# `docker run -p 8000:8000 densecap-jax` serves the page on http://localhost:8000.
# GPU hosts: `docker build --build-arg JAX_EXTRA=cuda12 ...` and `docker run --gpus all ...`.
# README.md ("Container image") lists the volumes and environment variables.
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

# "cuda12" installs jax[cuda12] (CUDA wheels for NVIDIA GPUs); empty: CPU only.
ARG JAX_EXTRA=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/densecap \
    PATH=/opt/densecap/bin:$PATH \
    XDG_CACHE_HOME=/cache \
    DENSECAP_JAX_MODEL=""

RUN python3 -m venv /opt/densecap \
    && useradd --create-home --uid 1000 --shell /usr/sbin/nologin densecap \
    && mkdir -p /cache \
    && chown densecap:densecap /cache

WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY densecap_jax ./densecap_jax
# The project pins its dependencies' lowest versions in setup.cfg; the CUDA
# build is pinned to the jax version just installed.
# hadolint ignore=DL3013
RUN pip install . \
    && if [ -n "$JAX_EXTRA" ]; then \
         pip install "jax[$JAX_EXTRA]==$(python3 -c 'import jax; print(jax.__version__)')"; \
       fi \
    && rm -rf /src

WORKDIR /home/densecap
USER 1000:1000
# compiled programs (jax/) and models fetched by name (models/): kept across restarts
VOLUME ["/cache"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
STOPSIGNAL SIGTERM
# DENSECAP_JAX_MODEL: a model directory (e.g. a mounted volume) or a model name;
# empty serves the bundled model. Arguments after the image name are passed to
# densecap-serve (e.g. --batch_size 4).
ENTRYPOINT ["/bin/sh", "-c", "exec densecap-serve --host 0.0.0.0 --port 8000 ${DENSECAP_JAX_MODEL:+--checkpoint \"$DENSECAP_JAX_MODEL\"} \"$@\"", "densecap-serve"]
