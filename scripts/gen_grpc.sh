#!/usr/bin/env bash
# Regenerate plugins/hostd_grpc/_proto from plugins/hostd_grpc/proto/*.proto with betterproto2.
# The output is committed, so `make test` needs no compiler. Run in a throwaway venv:
#   python3.11 -m venv /tmp/gen && /tmp/gen/bin/pip install "betterproto2-compiler~=0.10.0" \
#       "grpcio-tools==1.81.1" "protobuf<7" && PATH=/tmp/gen/bin:$PATH scripts/gen_grpc.sh
set -euo pipefail
cd "$(dirname "$0")/../plugins/hostd_grpc"
rm -rf _proto && mkdir _proto
python -m grpc_tools.protoc -I proto --python_betterproto2_out=_proto \
    --python_betterproto2_opt=server_generation=async \
    --python_betterproto2_opt=google_protobuf_descriptors \
    proto/grpc_predict_v2.proto
