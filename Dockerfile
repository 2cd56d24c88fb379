# Image of the pipeline worker; the same image creates the contract topics.
#
#   docker build -t omni-pipeline/worker:local .
#   docker run --rm -e OMNI_KAFKA_BOOTSTRAP=broker:9092 -e OMNI_REDIS_URL=redis://redis:6379/0 \
#       -e OMNI_ACTION_TOKEN_KEY="$OMNI_ACTION_TOKEN_KEY" \
#       -p 6066:6066 -p 9108:9108 -v omni-data:/data omni-pipeline/worker:local         # worker
#   docker run --rm -e OMNI_KAFKA_BOOTSTRAP=broker:9092 omni-pipeline/worker:local topics  # topics
#
# docker-compose.yml runs both. Settings are OMNI_* environment variables
# (README "Settings"). The image holds no secrets: the worker refuses to start
# without OMNI_ACTION_TOKEN_KEY (pass it with `docker run -e`, as above),
# and passwords come from the environment too (README "Security and privacy").
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Every compiled dependency (confluent-kafka, rocksdict, orjson, cramjam, zstandard,
# aiokafka, faust-streaming, pydantic-core) ships manylinux wheels for
# CPython 3.11, so no compiler is needed. The sources are removed afterwards:
# the worker runs the installed package.
# Two distributions: the contract (contract/pyproject.toml packs producers/ and
# schemas/) and the worker, which depends on it; one pip command resolves that
# dependency to the copy here (it is not on PyPI).
COPY pyproject.toml README.md /src/
COPY contract /src/contract
COPY processors /src/processors
COPY producers /src/producers
COPY schemas /src/schemas
COPY devstack /src/devstack
RUN pip install /src/contract /src && rm -rf /src
# Rules are data, outside the package: mount another folder here to change them,
# then `docker kill -s HUP <worker>` reloads without a restart.
COPY rules /etc/omni/rules

# A fixed numeric uid, so orchestrators can check runAsNonRoot. /data is created
# here and owned by it: a named volume mounted there starts with this owner.
RUN useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin omni \
    && mkdir -p /data \
    && chown omni:omni /data
USER 10001:10001
WORKDIR /home/omni

# Inside a container the endpoints must listen on every interface (the default
# 127.0.0.1 is unreachable through published ports and from Prometheus), and
# the Faust/RocksDB state goes to the volume.
ENV OMNI_WEB_BIND=0.0.0.0 \
    OMNI_DATA_DIR=/data \
    OMNI_RULES_DIR=/etc/omni/rules
# /livez and /readyz on 6066 (OMNI_WEB_PORT), /metrics on 9108 (OMNI_METRICS_PORT).
EXPOSE 6066 9108

# Liveness only (the event loop answers): a worker restoring its tables is
# alive but not ready. docker-compose.yml checks /readyz for depends_on. The
# slim image has no curl; Python's urllib exits non-zero on errors and non-2xx
# (no proxy: an HTTP_PROXY in the environment must not catch 127.0.0.1).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:%s/livez' % os.environ.get('OMNI_WEB_PORT', '6066'), timeout=4)"]

# `python -m processors worker`; `docker run IMAGE topics` creates the topics.
ENTRYPOINT ["python", "-m", "processors"]
CMD ["worker"]
