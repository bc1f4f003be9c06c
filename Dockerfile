# evalproxy: the proxy as a container. Mount a config and an output dir:
#   docker run -p 3825:3825 -v $PWD/cfg.yaml:/config.yaml:ro -v $PWD/out:/data \
#     evalproxy --config /config.yaml --upstream https://host/v1
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md CHANGELOG.md ./
COPY src ./src
RUN pip install --no-cache-dir . \
    && useradd --create-home --uid 10001 evalproxy \
    && mkdir -p /data \
    && chown evalproxy:evalproxy /data

USER 10001
WORKDIR /data
EXPOSE 3825

# In a container the proxy must listen beyond loopback for the port mapping to reach it.
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:3825/health', timeout=2).status == 200 else 1)"]

ENTRYPOINT ["evalproxy", "serve", "--host", "0.0.0.0", "--port", "3825", "--output-dir", "/data"]
