# Outside-tool checks: a stock protoc (grpcio-tools) and a NATS client in
# Python, used by tests/tests/outside_tool.rs to decode the vote stream.
pip_install "grpcio-tools==1.85.1" "nats-py==2.16.0"
