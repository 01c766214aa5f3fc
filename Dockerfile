# dockvault operator image; it is also the helper image for volume jobs (GNU tar, zstd, sh, find, coreutils).
#
# The build needs no network: dockvault and its dependencies come as wheels built on the host first.
# From the repository root, with a Python of the same minor version as the image's (3.11):
#
#   python3 -m pip wheel . -w wheelhouse
#   docker build --network none -t dockvault:latest .
#
# Build arguments:
#   BASE_IMAGE    any image with python3 (>= 3.11) and its venv module, sh, GNU tar and coreutils
#                 (default python:3.11-slim; a Debian bookworm rootfs with python3 python3-venv tar zstd
#                 findutils works too). zstd is installed with apt only when the base lacks it, which
#                 then needs network for that one step.
#   DOCKER_GID    group id of the Docker socket on the host, so the non-root user can use it (default 999;
#                 compose's `group_add` can add the right one at run time instead)
#   DOCKVAULT_UID user and group id of the `dockvault` user (default 10001)
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
# Only wheelhouse/ is in the context (.dockerignore); nothing is fetched.
COPY wheelhouse/ /wheels/
RUN python3 -m venv /opt/dockvault \
 && /opt/dockvault/bin/python -m pip install --no-index --find-links /wheels --no-cache-dir \
        --disable-pip-version-check dockvault \
 && /opt/dockvault/bin/python -m pip uninstall -y -q pip setuptools \
 && rm -rf /opt/dockvault/share \
 && /opt/dockvault/bin/dockvault --version

FROM ${BASE_IMAGE}
ARG DOCKER_GID=999
ARG DOCKVAULT_UID=10001
RUN set -eu; \
    if ! command -v zstd >/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends zstd && rm -rf /var/lib/apt/lists/*; \
    fi; \
    tar --version | head -n 1 | grep -q 'GNU tar'; \
    for tool in sh find sha256sum zstd; do command -v "$tool" >/dev/null; done; \
    docker_group=$(getent group "${DOCKER_GID}" | cut -d: -f1 || true); \
    if [ -z "$docker_group" ]; then groupadd --gid "${DOCKER_GID}" docker; docker_group=docker; fi; \
    groupadd --gid "${DOCKVAULT_UID}" dockvault; \
    useradd --uid "${DOCKVAULT_UID}" --gid dockvault --groups "$docker_group" --home-dir /var/lib/dockvault \
        --no-create-home --shell /usr/sbin/nologin dockvault; \
    install -d -o dockvault -g dockvault -m 0750 /var/lib/dockvault /state; \
    install -d -o dockvault -g dockvault -m 0755 /policies
COPY --from=build /opt/dockvault /opt/dockvault
ENV PATH=/opt/dockvault/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DOCKVAULT_STATE_DIR=/state \
    DOCKVAULT_CONFIG_DIR=/policies
USER dockvault
WORKDIR /var/lib/dockvault
ENTRYPOINT ["dockvault"]
CMD ["--help"]
