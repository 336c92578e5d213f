# edgeproxy on an edge host (or as a global swarm service with host-mode ports).
#   docker build -t edgeproxy .
#   docker run -d --network host -v /etc/edgeproxy:/etc/edgeproxy:ro edgeproxy
# Reload after editing the mounted config: docker kill -s HUP <container>
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY edgeproxy ./edgeproxy
RUN pip install . \
    && groupadd --system --gid 10001 edgeproxy \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin edgeproxy \
    && mkdir -p /etc/edgeproxy \
    && rm -rf /src

COPY config/edgeproxy.yaml /etc/edgeproxy/edgeproxy.yaml
VOLUME ["/etc/edgeproxy"]
WORKDIR /

# Ports below 1024 need CAP_NET_BIND_SERVICE for a non-root user: grant it at run time
# (docker run --cap-add NET_BIND_SERVICE, or the stack file's cap_add).
USER 10001:10001
STOPSIGNAL SIGTERM
ENTRYPOINT ["edgeproxy"]
CMD ["run", "-c", "/etc/edgeproxy/edgeproxy.yaml"]
