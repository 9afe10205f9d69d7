#!/usr/bin/env bash
# Debian packages the test suite and `make run` use: redis-server (for the arq transport);
# with `test`, also chromium (tests/http/test_docs_page.py renders /docs in it, headless) and Java 17
# (the spark batch engine: pyspark 4 runs on Java 17 or newer);
# with `bench`, also the load generators wrk and h2load (nghttp2-client) for `make bench`.
# Quick when they are already there; installs them with apt-get when running as root.
set -euo pipefail
missing=()
command -v redis-server > /dev/null || missing+=(redis-server)
if [ "${1:-}" = test ]; then
    command -v chromium > /dev/null || missing+=(chromium)
    java_major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
    [ "${java_major:-0}" -ge 17 ] 2> /dev/null || missing+=(openjdk-17-jre-headless)
fi
if [ "${1:-}" = bench ]; then
    command -v wrk > /dev/null || missing+=(wrk)
    command -v h2load > /dev/null || missing+=(nghttp2-client)
fi
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get > /dev/null; then
    echo "please install: ${missing[*]} (Debian/Ubuntu: apt-get install ${missing[*]})" >&2
    exit 1
fi
echo "installing ${missing[*]} with apt-get"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" > /dev/null
