#!/bin/sh
# Regenerate grpc_predict_v2_pb2.py, grpc_predict_v2_pb2.pyi and grpc_predict_v2_pb2_grpc.py
# from grpc_predict_v2.proto. Needs grpcio-tools; the committed files were made with
# grpcio-tools 1.75.1 (protoc 31.1), so they need protobuf >= 6.31.1 at runtime:
#   .venv/bin/pip install 'grpcio-tools==1.75.1' && src/modelmint/_serve/proto/regen.sh
set -eu
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../../.." && pwd)
python=${PYTHON:-$(cd "$src/.." && pwd)/.venv/bin/python}
[ -x "$python" ] || python=python3

# Compiling from src/ as modelmint/_serve/proto/... makes the generated _grpc module import the
# messages as modelmint._serve.proto.grpc_predict_v2_pb2 (a bare top-level import otherwise).
cd "$src"
"$python" -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. \
    modelmint/_serve/proto/grpc_predict_v2.proto

# tritonclient.grpc (and KServe, MLServer) register the same "inference.*" message names in
# protobuf's process-wide default pool, and registering a second file with those names fails
# ("duplicate symbol 'inference.ServerLiveRequest'", kserve/kserve#3099). Loading ours into a
# private pool lets both live in one process; the wire format does not depend on the pool.
pb2=modelmint/_serve/proto/grpc_predict_v2_pb2.py
sed 's/_descriptor_pool\.Default()\.AddSerializedFile(/_descriptor_pool.DescriptorPool().AddSerializedFile(/' \
    "$pb2" > "$pb2.tmp"
mv "$pb2.tmp" "$pb2"
grep -q '_descriptor_pool.DescriptorPool().AddSerializedFile(' "$pb2" || {
    echo "regen.sh: protoc output changed; the private descriptor pool edit did not apply" >&2
    exit 1
}
