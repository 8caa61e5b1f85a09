"""TLS, mTLS and bearer tokens on both services, with certificates made at test time.

A call without a valid token ends UNAUTHENTICATED and reaches no model: the SLM engine's prefill
count and the LLM server's received-call count do not move. Health checks stay open.
"""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cascade_servers import stand_in_llm
from corea_engine.protos import corea_pb2, corea_pb2_grpc
from corea_engine.server.auth import AuthConfigError, TokenTable
from corea_engine.server.security import ServerSecurity
from corea_engine.server.tls import ClientTLS, ServerTLS, TLSConfigError
from security_servers import bearer, secured_corea, secured_llm
from tls_certs import make_certs

TOKENS = {"s3cret-alpha": "alpha", "s3cret-beta": "beta"}


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


def tls_channel(address: str, ca: str, cert: str | None = None, key: str | None = None) -> grpc.Channel:
    return grpc.secure_channel(address, ClientTLS(ca_file=ca, cert_file=cert, key_file=key).credentials())


def question(q: str = "What is 2 + 3?") -> corea_pb2.SolveRequest:
    return corea_pb2.SolveRequest(question=q, mode=corea_pb2.ROUTING_MODE_SLM_ONLY)


def solve_code(channel, request=None, metadata=None) -> grpc.StatusCode:
    try:
        corea_pb2_grpc.CoreaStub(channel).Solve(request or question(), timeout=120, metadata=metadata)
        return grpc.StatusCode.OK
    except grpc.RpcError as err:
        return err.code()


# ------------------------------------------------------------------------------------- TLS
def test_tls_server_refuses_plaintext_and_untrusted_clients(slm_executor, certs):
    security = ServerSecurity(tls=ServerTLS(certs.server_cert, certs.server_key))
    with secured_corea(slm_executor, security) as server:
        with grpc.insecure_channel(server.address) as plain:
            assert solve_code(plain) == grpc.StatusCode.UNAVAILABLE
        with tls_channel(server.address, certs.other_ca) as untrusted:  # the server's cert is not signed by it
            assert solve_code(untrusted) == grpc.StatusCode.UNAVAILABLE
        with tls_channel(server.address, certs.ca) as channel:
            r = corea_pb2_grpc.CoreaStub(channel).Solve(question(), timeout=300)
            assert r.answered_by == corea_pb2.TIER_SLM and r.slm_tokens.completion_tokens > 0


def test_mtls_requires_a_client_certificate_from_the_configured_ca(slm_executor, certs):
    security = ServerSecurity(tls=ServerTLS(certs.server_cert, certs.server_key, client_ca_file=certs.ca))
    with secured_corea(slm_executor, security) as server:
        with tls_channel(server.address, certs.ca) as no_cert:
            assert solve_code(no_cert) == grpc.StatusCode.UNAVAILABLE
        with tls_channel(server.address, certs.ca, certs.other_client_cert, certs.other_client_key) as wrong_ca:
            assert solve_code(wrong_ca) == grpc.StatusCode.UNAVAILABLE
        with tls_channel(server.address, certs.ca, certs.client_cert, certs.client_key) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
            assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_tls_files_are_checked_up_front(tmp_path, certs):
    not_pem = tmp_path / "cert.txt"
    not_pem.write_text("hello")
    with pytest.raises(TLSConfigError, match="does not exist"):
        ServerTLS(str(tmp_path / "missing.pem"), certs.server_key).credentials()
    with pytest.raises(TLSConfigError, match="not PEM"):
        ServerTLS(str(not_pem), certs.server_key).credentials()
    with pytest.raises(TLSConfigError, match="both cert_file and key_file"):
        ClientTLS(ca_file=certs.ca, cert_file=certs.client_cert)


# ------------------------------------------------------------------------------ bearer tokens
@pytest.fixture(scope="module")
def authed(slm_executor, certs):
    """An LLM server and a cascade server, both TLS + tokens; the cascade reaches its LLM with TLS + a token."""
    llm_executor = stand_in_llm(slm_executor)
    tls = ServerTLS(certs.server_cert, certs.server_key)
    llm = secured_llm(llm_executor, ServerSecurity(tls=tls, tokens=TokenTable({"llm-token-1": "cascade"})))
    token_file = certs.ca.rsplit("/", 1)[0] + "/llm.token"
    with open(token_file, "w") as f:
        f.write("llm-token-1\n")
    corea = secured_corea(slm_executor, ServerSecurity(tls=tls, tokens=TokenTable(TOKENS)),
                          mode="cascade", llm_address=llm.address, llm_tls_ca_file=certs.ca, llm_token_file=token_file)
    channel = tls_channel(corea.address, certs.ca)
    yield corea, llm, llm_executor, channel
    channel.close()
    corea.close()
    llm.close()
    llm_executor.close()


def model_work(slm, llm_server, llm_executor) -> tuple[int, int, int]:
    """(SLM prefills, LLM calls received, LLM prefills): any model work moves one of them."""
    return slm.stats.prefills, llm_server.server.worker.calls, llm_executor.stats.prefills


@pytest.mark.parametrize("metadata", [None, bearer("wrong"), bearer(""), (("authorization", "s3cret-alpha"),),
                                      (("authorization", "Basic s3cret-alpha"),)],
                         ids=["none", "wrong", "empty", "no-scheme", "basic"])
def test_without_a_valid_token_every_method_is_unauthenticated_and_no_model_runs(authed, slm_executor, metadata):
    corea, llm, llm_executor, channel = authed
    stub = corea_pb2_grpc.CoreaStub(channel)
    before = model_work(slm_executor, llm, llm_executor)
    calls = [
        lambda: stub.Solve(question(), timeout=30, metadata=metadata),
        lambda: list(stub.SolveStream(question(), timeout=30, metadata=metadata)),
        lambda: stub.SolveBatch(corea_pb2.SolveBatchRequest(requests=[question()] * 3), timeout=30, metadata=metadata),
        lambda: list(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=30, metadata=metadata)),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, err.value
        assert "bearer token" in err.value.details()
    assert model_work(slm_executor, llm, llm_executor) == before
    # Health stays open (orchestrator probes carry no token), Check and Watch (client-side health checking).
    health = health_pb2_grpc.HealthStub(channel)
    check = health.Check(health_pb2.HealthCheckRequest(service="corea.v1.Corea"), timeout=30, metadata=metadata)
    assert check.status == health_pb2.HealthCheckResponse.SERVING
    watch = health.Watch(health_pb2.HealthCheckRequest(service="corea.v1.Corea"), timeout=30, metadata=metadata)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()


def test_the_llm_server_refuses_a_caller_without_its_token(authed, certs, slm_executor):
    from smg_grpc_proto.generated import sglang_scheduler_pb2 as pb, sglang_scheduler_pb2_grpc as pb_grpc

    _, llm, llm_executor, _ = authed
    before = model_work(slm_executor, llm, llm_executor)
    request = pb.GenerateRequest(tokenized=pb.TokenizedInput(input_ids=[1, 2, 3]),
                                 sampling_params=pb.SamplingParams(max_new_tokens=4))
    with tls_channel(llm.address, certs.ca) as channel:
        with pytest.raises(grpc.RpcError) as err:
            list(pb_grpc.SglangSchedulerStub(channel).Generate(
                request, timeout=30, metadata=bearer("s3cret-alpha")))  # a cascade token, not the LLM's
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert model_work(slm_executor, llm, llm_executor) == before


def test_a_valid_token_reaches_the_cascade_which_reaches_the_llm_over_tls_with_its_token(authed, slm_executor):
    corea, llm, llm_executor, channel = authed
    stub = corea_pb2_grpc.CoreaStub(channel)
    calls = llm.server.worker.calls
    r = stub.Solve(corea_pb2.SolveRequest(question="What is 7 + 5?", threshold=1.0), timeout=600,
                   metadata=bearer("s3cret-beta"))
    assert r.deferred and r.answered_by == corea_pb2.TIER_LLM and not r.degraded, r
    assert llm.server.worker.calls == calls + 1


def test_a_wrong_llm_token_degrades_with_the_reason_and_the_llm_runs_nothing(slm_executor, authed, certs, tmp_path):
    _, llm, llm_executor, _ = authed
    bad = tmp_path / "bad.token"
    bad.write_text("not-the-llm-token\n")
    corea = secured_corea(slm_executor, None, mode="cascade", threshold=1.0, llm_address=llm.address,
                          llm_tls_ca_file=certs.ca, llm_token_file=str(bad))
    try:
        before = model_work(slm_executor, llm, llm_executor)[1:]
        with grpc.insecure_channel(corea.address) as channel:
            r = corea_pb2_grpc.CoreaStub(channel).Solve(corea_pb2.SolveRequest(question="What is 7 + 5?"), timeout=600)
        assert r.degraded and r.answered_by == corea_pb2.TIER_SLM and "UNAUTHENTICATED" in r.degraded_reason, r
        assert model_work(slm_executor, llm, llm_executor)[1:] == before
    finally:
        corea.close()


def test_token_table_from_file_and_environment(tmp_path):
    f = tmp_path / "tokens.txt"
    f.write_text("# operators\nalice:tok-a\n\n  tok-bare  \n")
    table = TokenTable.load(f, env={"COREA_AUTH_TOKENS": "ci:tok-c, tok-d"})
    assert len(table) == 4
    assert table.identify("tok-a") == "alice" and table.identify("tok-c") == "ci"
    assert table.identify("tok-bare").startswith("token-") and table.identify("nope") is None
    assert table.identify("") is None and table.identify(None) is None
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(AuthConfigError, match="holds no token"):
        TokenTable.load(empty, env={})
    with pytest.raises(AuthConfigError, match="entry 2"):
        TokenTable.load(None, env={"COREA_AUTH_TOKENS": "ok-token,bad token"})
    with pytest.raises(AuthConfigError, match="does not exist"):
        TokenTable.load(tmp_path / "missing.txt", env={})


@pytest.mark.parametrize("command,flags,message", [
    ("serve-llm", ["--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"], "does not exist"),
    ("serve-llm", ["--tls-cert", "/nonexistent/cert.pem"], "go together"),
    ("serve", ["--mode", "slm_only", "--auth-tokens-file", "/nonexistent/tokens"], "does not exist"),
    ("serve", ["--mode", "slm_only", "--llm-tls-cert", "/x.pem"], "go together"),
])
def test_serve_commands_refuse_bad_security_settings_before_loading_a_model(command, flags, message):
    done = subprocess.run([sys.executable, "-m", "corea_engine.cli", command, "--port", "0", *flags],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
