# One image for the hub and the agent: `ordersync hub serve ...` or `ordersync agent run ...`.
#   docker build -t ordersync .
#   docker run --rm -p 8080:8080 ordersync hub serve --host 0.0.0.0 --db sqlite:////data/hub.db
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml requirements.lock README.md LICENSE ./
COPY src ./src
# The exact dependency set CI tests (requirements.lock), then ordersync itself without resolving.
RUN python -m venv /opt/ordersync \
 && /opt/ordersync/bin/pip install --no-cache-dir -r requirements.lock \
 && /opt/ordersync/bin/pip install --no-cache-dir --no-deps .

FROM python:3.11-slim
COPY --from=build /opt/ordersync /opt/ordersync
ENV PATH=/opt/ordersync/bin:$PATH \
    PYTHONUNBUFFERED=1
RUN useradd --system --home-dir /data --create-home ordersync
USER ordersync
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080 9108
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import sys,urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz').status != 200)" || exit 1
ENTRYPOINT ["ordersync"]
CMD ["--help"]
