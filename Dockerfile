# chant on an NVIDIA GPU: docker build -t chant . && docker compose up (see README, "Docker").
#
# The CUDA runtime base only has to match the host's driver: torch brings its own CUDA libraries.
# PyPI's torch 2.13.0 for Linux x86-64 is the CUDA 13.0 build (NVIDIA driver 580 or newer); for an
# older driver build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 (and a
# matching CUDA_IMAGE), if PyTorch publishes that build of the pinned version.
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-runtime-ubuntu24.04

# --- the wheel: built once, installed below (the image holds no source checkout) ---
FROM ${CUDA_IMAGE} AS wheel
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY core ./core
COPY bot ./bot
COPY migrations ./migrations
RUN python3 -m venv /build \
    && /build/bin/pip install --no-cache-dir "setuptools>=77.0.3" \
    && /build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation -w /dist .

# --- the runtime ---
FROM ${CUDA_IMAGE}
ARG TORCH_INDEX=https://pypi.org/simple
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin chant \
    && mkdir -p /data \
    && chown chant:chant /data
COPY --from=wheel /src/constraints.txt /opt/chant/constraints.txt
COPY --from=wheel /dist/ /opt/chant/dist/
# torch first, from the CUDA index, at the version CI tests (constraints.txt); then chant and the rest.
RUN python3 -m venv /opt/chant/venv \
    && /opt/chant/venv/bin/pip install --no-cache-dir --index-url "${TORCH_INDEX}" \
       --extra-index-url https://pypi.org/simple -c /opt/chant/constraints.txt "torch==2.13.0" \
    && /opt/chant/venv/bin/pip install --no-cache-dir -c /opt/chant/constraints.txt /opt/chant/dist/chant-*.whl

# Everything chant keeps lives under /data: the SQLite database (unless PostgreSQL is configured),
# models in the A1111 layout, the skeleton/hash cache and the Hugging Face cache.
ENV PATH=/opt/chant/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CHANT_CACHE=/data/cache \
    HF_HOME=/data/cache/huggingface \
    CHANT_DATABASE__URL=sqlite:////data/chant.db \
    CHANT_ENGINE__MODEL_DIRS=/data/models/Stable-diffusion \
    CHANT_ENGINE__LORA_DIRS=/data/models/Lora \
    CHANT_ENGINE__EMBEDDING_DIRS=/data/embeddings \
    CHANT_ENGINE__HYPERNETWORK_DIRS=/data/models/hypernetworks \
    CHANT_ENGINE__VAE_DIRS=/data/models/VAE
VOLUME ["/data"]
WORKDIR /data
USER 10001:10001

# Healthy = the settings load and the database answers with chant's schema revision.
HEALTHCHECK --interval=60s --timeout=30s --start-period=120s --retries=3 \
    CMD ["chant", "db", "current"]

ENTRYPOINT ["tini", "--", "chant"]
CMD ["run"]
