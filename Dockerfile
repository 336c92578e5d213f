# edgeproxy on an edge host (or as a global swarm service with host-mode ports: config/edgeproxy-stack.yml).
#   docker build -t edgeproxy .
#   docker run -d --name edgeproxy --network host --stop-timeout 40 \
#       -v /etc/edgeproxy:/etc/edgeproxy:ro edgeproxy
# Reload after editing the mounted config: docker kill -s HUP edgeproxy
# Stop: SIGTERM; open connections drain for up to timeouts.drain (30s unless set), then exit 0.
# --stop-timeout (stop_grace_period in a stack file) must be longer than timeouts.drain, or
# Docker kills the drain (its default is 10 s).
#
# The container starts as root, and only the supervisor stays root: it binds every port (80 and
# 443 too, on reload too), holds the Docker socket and TLS keys, runs discovery and health checks.
# The workers that face clients become the config's `user` (edgeproxy, uid 10001, in the shipped
# config/image/edgeproxy.yaml): no groups, no capabilities, no_new_privs. No --cap-add, no USER.
#
# Two stages: "build" makes a virtualenv in /opt/edgeproxy from hash-pinned wheels
# (requirements/image.txt) and the project's own wheel (built with requirements/build.txt);
# the image gets that virtualenv only. Regenerate both files as their headers say.
# The wheel has the hot path compiled by mypyc (setup.py): the build stage gets a C compiler
# and the Python headers, the image does not (`edgeproxy --version` says "compiled: mypyc ...").

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# gcc for mypyc's C; the headers of the Python that builds: the official image ships them, a
# Debian-made base (tests/image/base.sh) needs python3-dev.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && { python -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' \
         || apt-get install -y --no-install-recommends python3-dev; } \
    && rm -rf /var/lib/apt/lists/*
# Dependencies first: this layer is rebuilt only when a pin changes, not on every source edit.
# `pip --python` installs into a virtualenv made without pip (Debian's Python has no ensurepip).
# The build tools run once: no bytecode for them.
COPY requirements/ requirements/
RUN python -m venv --without-pip /opt/build \
    && pip --python /opt/build/bin/python install --require-hashes --only-binary :all: --no-compile \
       -r requirements/build.txt \
    && python -m venv --without-pip /opt/edgeproxy \
    && pip --python /opt/edgeproxy/bin/python install --require-hashes --only-binary :all: -r requirements/image.txt
COPY pyproject.toml setup.py README.md ./
COPY edgeproxy ./edgeproxy
RUN pip --python /opt/build/bin/python wheel --no-deps --no-build-isolation --wheel-dir /src/dist . \
    && pip --python /opt/edgeproxy/bin/python install --no-deps --no-index /src/dist/edgeproxy-*.whl

FROM python:3.11-slim-bookworm
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="edgeproxy" \
      org.opencontainers.image.description="Edge load balancer for Docker Swarm that hands backends the real client IP (X-Forwarded-For, PROXY protocol v1/v2)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="python:3.11-slim-bookworm"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/edgeproxy/bin:$PATH
RUN groupadd --system --gid 10001 edgeproxy \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin edgeproxy
COPY --from=build /opt/edgeproxy /opt/edgeproxy
COPY config/image/edgeproxy.yaml /etc/edgeproxy/edgeproxy.yaml

# No USER: the supervisor needs root (see above); the workers drop to the config's `user`.
# GET /healthz on the admin endpoint of the config (healthy: 200; 503 while draining); exits 0
# without checking when the config has no admin.bind.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 CMD ["edgeproxy", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["edgeproxy"]
CMD ["run", "-c", "/etc/edgeproxy/edgeproxy.yaml"]
