# syntax=docker/dockerfile:1
# pullhealth operator image: `docker build -t pullhealth:0.1.0 .`
# Stage 1 builds the wheel from pyproject.toml + operator/; stage 2 installs only that
# wheel (and its dependencies from PyPI, pinned with hashes) and runs as a non-root user.
# tests/test_dockerfile.py runs the pip steps below in a clean venv, without Docker.

FROM python:3.11-slim AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN pip wheel --no-deps -w /dist .

FROM python:3.11-slim
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="pullhealth" \
      org.opencontainers.image.description="Tells Kubernetes admins why an image pull fails, from inside the cluster." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/pullhealth/pullhealth" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Dependencies exactly as locked (versions and hashes: requirements.lock, from pyproject.toml
# by pip-compile), then the wheel alone; `pip check` proves the lock satisfies it.
COPY requirements.lock /tmp/
RUN pip install --require-hashes --no-deps -r /tmp/requirements.lock && rm /tmp/requirements.lock
COPY --from=build /dist/ /tmp/dist/
RUN pip install --no-deps /tmp/dist/*.whl && pip check && rm -rf /tmp/dist
# The UID/GID the chart's securityContext expects (runAsUser/runAsGroup 10001).
RUN groupadd --system --gid 10001 pullhealth \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin pullhealth
USER 10001:10001
# /metrics and /healthz (liveness).
EXPOSE 8080 8081
ENTRYPOINT ["pullhealth", "run"]
CMD ["--all-namespaces", "--log-format", "json"]
