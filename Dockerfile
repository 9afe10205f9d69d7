# hostd: every model in host.yaml on every transport.
#   docker build -t hostd .
#   docker run --rm -p 8080:8080 -p 8081:8081 -p 8765:8765 -p 5555:5555 hostd
# Point Kafka and Redis elsewhere with HOSTD_TRANSPORTS__KAFKA__BOOTSTRAP_SERVERS=... and
# HOSTD_TRANSPORTS__ARQ__REDIS_URL=... (until they answer, hostd retries them and serves the rest).

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY hostd ./hostd
COPY plugins ./plugins
COPY models ./models
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[kafka,arq,uvicorn,tracing]" \
        ./models/iris_model ./models/digits_model ./models/diabetes_model

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 hostd
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
COPY host.yaml /etc/hostd/host.yaml
USER 10001
# host.yaml listens on 127.0.0.1; in a container every transport listens on all interfaces.
ENV HOSTD_TRANSPORTS__HTTP__HOST=0.0.0.0 \
    HOSTD_TRANSPORTS__GRPC__HOST=0.0.0.0 \
    HOSTD_TRANSPORTS__WS__HOST=0.0.0.0 \
    HOSTD_TRANSPORTS__ZMQ__BIND=tcp://0.0.0.0:5555 \
    HOSTD_TRANSPORTS__ZMQ__ZERORPC_BIND=tcp://0.0.0.0:4242
#      HTTP gRPC WebSocket ZeroMQ zerorpc
EXPOSE 8080 8081 8765 5555 4242
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/api/health/ready', timeout=2).status != 200)"]
# SIGTERM drains: requests already accepted are answered (shutdown_grace_s) before the exit.
STOPSIGNAL SIGTERM
ENTRYPOINT ["hostd", "run"]
CMD ["/etc/hostd/host.yaml"]
