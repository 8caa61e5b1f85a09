"""gRPC services: corea.v1.Corea over a Cascade; sglang.grpc.scheduler.SglangScheduler over an Executor.

app.build_server(...) assembles a grpc.aio server (health, reflection, interceptors, metrics);
app.serve(...) runs it until SIGTERM/SIGINT and drains in-flight requests.
"""
