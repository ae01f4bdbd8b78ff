# alert_worker: the RQ worker with its scheduler, sweeper and (optional) metrics endpoint.
# Build: docker build -t alert-worker .   Run: docker run --init --env-file alert-worker.env alert-worker
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin alert

WORKDIR /app
# requirements.txt ends with "-e .": the package source must be present before installing.
COPY requirements.txt requirements.lock setup.cfg pyproject.toml README.md ./
COPY alert_worker ./alert_worker
RUN pip install -r requirements.txt

USER alert

# ALERT_METRICS_PORT, when set, serves Prometheus text here; publish it with -p 9108:9108.
EXPOSE 9108

# Exit 0 while Postgres and Redis answer (warnings, e.g. a disabled channel, do not fail it).
HEALTHCHECK --interval=30s --timeout=15s --start-period=20s --retries=3 CMD ["alert-worker", "check"]

# SIGTERM (docker stop) is RQ's warm shutdown: the running delivery finishes. Give it longer than
# ALERT_JOB_TIMEOUT_SECONDS: docker stop --time 90 (or stop_grace_period: 90s in compose).
STOPSIGNAL SIGTERM
CMD ["python", "-m", "alert_worker"]
