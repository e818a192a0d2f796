"""Generated KServe V2 gRPC modules (``grpc_predict_v2.proto``); regenerate with ``regen.sh``."""
