# One image runs everything HeliosDB Streaming has on Kubernetes: `helios operator`, `helios server`
# and the jobs' workers (the operator starts worker pods from this same image).
#
#   docker build -t heliosdb/heliosdb-streaming:0.1.0 .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HELIOS_HOME=/var/lib/helios

# Every dependency ships manylinux wheels, so no compiler is needed; the source tree is not kept.
COPY pyproject.toml README.md /tmp/helios-src/
COPY src /tmp/helios-src/src
RUN pip install --no-cache-dir /tmp/helios-src \
    && rm -rf /tmp/helios-src

# A fixed non-root uid/gid: the chart's securityContext (runAsUser 10001) and volume ownership use it.
RUN groupadd --system --gid 10001 helios \
    && useradd --system --uid 10001 --gid helios --home-dir /var/lib/helios --create-home \
        --shell /usr/sbin/nologin helios
USER 10001:10001
WORKDIR /var/lib/helios

# 8081: the REST API server; 7070: the operator's control port that workers connect back to.
EXPOSE 8081 7070
ENTRYPOINT ["helios"]
CMD ["--help"]
