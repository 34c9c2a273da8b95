"""The server in-process (uvicorn in a thread, real sockets on 127.0.0.1): the official openai client against
Encoder.encode, dimensions, every bad input, the API key, overload, concurrency, the info endpoints."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import random
import re
import threading
import time

import httpx
import numpy as np
import pytest
from _serve_helpers import SENTENCES, GatedEncoder, InProcessServer, tiny_encoder, wait_until
from openai import OpenAI

from bellm.encoder import default_max_tokens_per_batch
from bellm.server import ServerConfig, build_app

ATOL = 1e-5


@pytest.fixture(scope="module")
def encoder():
    return tiny_encoder()


@pytest.fixture(scope="module")
def server(encoder):
    app = build_app(encoder, ServerConfig(model_name="tiny", max_inputs=8, max_request_bytes=4096))
    with InProcessServer(app) as running:
        yield running


def _client(server, key="unused") -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


def _post(server, body, headers=None) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json", **(headers or {})}
    return httpx.post(f"{server.url}/v1/embeddings", content=content, headers=headers, timeout=60)


def _vector(embedding) -> np.ndarray:
    """A float list, or the base64 string the client hands back as is when base64 was asked for explicitly."""
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4")
    return np.asarray(embedding)


# ---------------------------------------------------------------------------------------------- correctness
def test_openai_client_base64_and_float_equal_encode(server, encoder):
    client = _client(server)
    want = encoder.encode(SENTENCES, normalize_embeddings=True)
    got_b64 = client.embeddings.create(input=SENTENCES, model="tiny")  # the client asks for base64
    got_float = client.embeddings.create(input=SENTENCES, model="tiny", encoding_format="float")
    for response in (got_b64, got_float):
        assert [d.index for d in response.data] == list(range(len(SENTENCES)))
        np.testing.assert_allclose(np.array([d.embedding for d in response.data]), want, atol=ATOL)
        assert response.model == "tiny" and response.object == "list"
        tokens = sum(len(t) for t in encoder.tokenize(SENTENCES)[0])
        assert response.usage.prompt_tokens == response.usage.total_tokens == tokens
    single = client.embeddings.create(input=SENTENCES[2], model="tiny")
    assert len(single.data) == 1
    np.testing.assert_allclose(single.data[0].embedding, want[2], atol=ATOL)


def test_raw_response_shapes(server, encoder):
    body = _post(server, {"input": ["a b", "c"], "encoding_format": "base64", "user": "ignored"}).json()
    assert set(body) == {"object", "data", "model", "usage"}
    assert body["data"][0]["object"] == "embedding"
    row = np.frombuffer(base64.b64decode(body["data"][1]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(row, encoder.encode("c", normalize_embeddings=True), atol=ATOL)
    plain = _post(server, {"input": "c"}).json()  # encoding_format defaults to float
    np.testing.assert_allclose(plain["data"][0]["embedding"], row, atol=ATOL)


def test_dimensions_truncate_then_renormalise(server, encoder):
    full = encoder.encode(SENTENCES[:3], normalize_embeddings=True)
    for encoding_format in ("float", "base64"):
        got = _client(server).embeddings.create(
            input=SENTENCES[:3], model="tiny", dimensions=16, encoding_format=encoding_format
        )
        emb = np.array([_vector(d.embedding) for d in got.data])
        want = full[:, :16] / np.linalg.norm(full[:, :16], axis=1, keepdims=True)
        assert emb.shape == (3, 16)
        np.testing.assert_allclose(emb, want, atol=ATOL)
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=ATOL)


# ---------------------------------------------------------------------------------------------- bad input
BAD = [
    (b'{"input": "a"', 400, None, "not valid JSON"),
    (b"[1, 2]", 400, None, "must be a JSON object, got list"),
    ({"model": "tiny"}, 400, "input", "'input' is required"),
    ({"input": ""}, 400, "input", "empty string"),
    ({"input": []}, 400, "input", "empty list"),
    ({"input": 42}, 400, "input", "got int 42"),
    ({"input": [1, 2, 3]}, 400, "input", "token ids"),
    ({"input": [[1, 2], [3]]}, 400, "input", "token ids"),
    ({"input": ["a", 3]}, 400, "input", r"'input\[1\]' is int 3"),
    ({"input": ["a", ""]}, 400, "input", r"'input\[1\]' is an empty string"),
    ({"input": ["a"] * 9}, 400, "input", "9 items, more than this server's limit of 8"),
    ({"input": "a", "encoding_format": "int8"}, 400, "encoding_format", "unknown 'encoding_format' 'int8'"),
    ({"input": "a", "dimensions": 0}, 400, "dimensions", "'dimensions' is 0; this model gives 1..64"),
    ({"input": "a", "dimensions": 65}, 400, "dimensions", "'dimensions' is 65"),
    ({"input": "a", "dimensions": "8"}, 400, "dimensions", "must be an integer in 1..64, got '8'"),
    ({"input": "a", "dimensions": True}, 400, "dimensions", "must be an integer"),
    ({"input": "a", "model": 3}, 400, "model", "'model' must be a string"),
    ({"input": "x" * 5000}, 413, None, "over this server's limit of 4096 bytes"),
]


@pytest.mark.parametrize("body,status,param,message", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_input_gets_a_clear_openai_error(server, body, status, param, message):
    response = _post(server, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert re.search(message, error["message"]), error["message"]


def test_chunked_body_over_the_limit_is_413(server):
    def chunks():
        for _ in range(10):
            yield b" " * 1000

    response = httpx.post(f"{server.url}/v1/embeddings", content=chunks())
    assert response.status_code == 413 and "4096 bytes" in response.json()["error"]["message"]


def test_unknown_route_and_method_get_openai_errors(server):
    missing = httpx.get(f"{server.url}/v1/chat")
    assert missing.status_code == 404 and "/v1/embeddings" in missing.json()["error"]["message"]
    wrong = httpx.get(f"{server.url}/v1/embeddings")
    assert wrong.status_code == 405 and wrong.json()["error"]["type"] == "invalid_request_error"


def test_openai_client_raises_on_bad_input(server):
    import openai

    with pytest.raises(openai.BadRequestError, match="dimensions"):
        _client(server).embeddings.create(input="a", model="tiny", dimensions=1000)


@pytest.mark.filterwarnings(
    "ignore:.* were truncated:UserWarning"
)  # the server's encode; it reports them itself
def test_over_long_inputs_truncate_or_refuse(encoder):
    short = tiny_encoder(max_length=60)
    n_prompt = len(short.tokenize([""])[0][0])  # BOS + prompt: 43 of the 60 tokens; 17 left for the text
    long_text = "a sentence that is much longer than seventeen characters"
    with pytest.warns(UserWarning, match="truncated"):
        want = short.encode(["ok", long_text], normalize_embeddings=True)
    with InProcessServer(build_app(short, ServerConfig(model_name="tiny"))) as server:
        assert httpx.get(f"{server.url}/info").json()["over_long_inputs"].startswith("truncate")
        response = _post(server, {"input": ["ok", long_text]})
        assert response.status_code == 200 and response.headers["x-bellm-truncated-inputs"] == "1"
        got = np.array([d["embedding"] for d in response.json()["data"]])
        np.testing.assert_allclose(got, want, atol=ATOL)
        assert response.json()["usage"]["prompt_tokens"] == n_prompt + 2 + 60
    refusing = build_app(tiny_encoder(max_length=60), ServerConfig(model_name="tiny", truncate=False))
    with InProcessServer(refusing) as server:
        assert httpx.get(f"{server.url}/info").json()["over_long_inputs"].startswith("refuse")
        response = _post(server, {"input": ["ok", long_text]})
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "input_too_long"
        assert f"'input[1]' is {n_prompt + len(long_text)} tokens" in error["message"]
        assert "max_length=60" in error["message"]
        assert _post(server, {"input": "ok"}).status_code == 200


# ---------------------------------------------------------------------------------------------- auth
def test_api_key(encoder):
    app = build_app(encoder, ServerConfig(model_name="tiny", api_key="s3cret"))
    with InProcessServer(app) as server:
        assert httpx.get(f"{server.url}/health").status_code == 200  # open: for load balancers
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            for path in ("/v1/models", "/info", "/metrics"):
                response = httpx.get(f"{server.url}{path}", headers=headers)
                assert response.status_code == 401, (path, headers)
                assert response.json()["error"]["code"] == "invalid_api_key"
            assert _post(server, {"input": "a"}, headers=headers).status_code == 401
        import openai

        with pytest.raises(openai.AuthenticationError):
            _client(server, key="wrong").embeddings.create(input="a", model="tiny")
        got = _client(server, key="s3cret").embeddings.create(input="a", model="tiny")
        np.testing.assert_allclose(
            got.data[0].embedding, encoder.encode("a", normalize_embeddings=True), atol=ATOL
        )


def test_empty_api_key_is_refused():
    with pytest.raises(ValueError, match="api_key is empty"):
        ServerConfig(api_key="  ")


# ---------------------------------------------------------------------------------------------- overload
def test_queue_limit_gives_429_at_once_and_health_stays_responsive(encoder):
    gated = GatedEncoder(encoder)
    app = build_app(gated, ServerConfig(model_name="tiny", max_queue_tokens=60, max_wait_ms=0))
    with InProcessServer(app) as server, concurrent.futures.ThreadPoolExecutor(2) as pool:
        gated.gate.clear()
        gated.entered.clear()
        first = pool.submit(_post, server, {"input": "first"})  # 48 tokens, held inside the forward
        assert gated.entered.wait(30)
        second = pool.submit(_post, server, {"input": "second"})  # 49 tokens, queued
        wait_until(lambda: app.state.batcher.queued_inputs == 1, what="the second request to queue")
        t0 = time.perf_counter()
        health = httpx.get(f"{server.url}/health")
        refused = _post(server, {"input": "third"})  # 49 + 48 > 60
        elapsed = time.perf_counter() - t0
        assert health.status_code == 200
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["code"] == "queue_full"
        assert "over the queue limit of 60 tokens" in refused.json()["error"]["message"]
        assert elapsed < 10  # answered while the forward is still held (a full wait would be 60 s)
        metrics = httpx.get(f"{server.url}/metrics").text
        assert "bellm_queue_inputs 1.0" in metrics and "bellm_requests_in_flight 2.0" in metrics
        gated.gate.set()
        for future, text in ((first, "first"), (second, "second")):
            response = future.result(60)
            assert response.status_code == 200
            np.testing.assert_allclose(
                response.json()["data"][0]["embedding"],
                encoder.encode(text, normalize_embeddings=True),
                atol=ATOL,
            )


def test_stopping_answers_every_request_in_flight(encoder):
    gated = GatedEncoder(encoder)
    app = build_app(gated, ServerConfig(model_name="tiny", max_wait_ms=0))
    server = InProcessServer(app).__enter__()
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            gated.gate.clear()
            gated.entered.clear()
            # the first request is held inside the forward before the other three are sent, so they
            # cannot share its batch and all three wait in the queue (6 inputs)
            futures = [pool.submit(_post, server, {"input": SENTENCES[0:2]})]
            assert gated.entered.wait(30)
            futures += [pool.submit(_post, server, {"input": SENTENCES[i : i + 2]}) for i in range(1, 4)]
            wait_until(lambda: app.state.batcher.queued_inputs == 6, what="three requests to queue")
            stopper = threading.Thread(target=server.stop)
            stopper.start()  # uvicorn stops accepting, then waits for the requests in flight
            time.sleep(0.2)
            assert stopper.is_alive() and app.state.ready
            gated.gate.set()
            stopper.join(60)
            for i, future in enumerate(futures):
                response = future.result(60)
                assert response.status_code == 200
                got = np.array([d["embedding"] for d in response.json()["data"]])
                want = encoder.encode(SENTENCES[i : i + 2], normalize_embeddings=True)
                np.testing.assert_allclose(got, want, atol=ATOL)
        assert not app.state.ready
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/health")
    finally:
        gated.gate.set()  # a failed assertion above must not leave the forward held for 60 s
        server.__exit__(None, None, None)


# ---------------------------------------------------------------------------------------------- concurrency
def test_32_concurrent_clients_get_the_offline_embeddings(encoder):
    """32 threads x 3 requests of 1-8 sentences: all 200, every row equal to the offline encode whatever it
    was batched with, and requests did share forwards."""
    rng = random.Random(0)
    words = "the a man woman dog plays runs quickly guitar park red big small over under".split()
    pool_sentences = [" ".join(rng.choices(words, k=rng.randint(1, 12))) for _ in range(200)]
    requests = [[rng.sample(pool_sentences, rng.randint(1, 8)) for _ in range(3)] for _ in range(32)]
    want = dict(zip(pool_sentences, encoder.encode(pool_sentences, normalize_embeddings=True)))
    app = build_app(encoder, ServerConfig(model_name="tiny", max_wait_ms=20))
    with InProcessServer(app) as server:
        barrier = threading.Barrier(32)

        def client(batches):
            openai_client = _client(server)
            barrier.wait()
            out = []
            for texts in batches:
                response = openai_client.embeddings.create(input=texts, model="tiny")
                out.append((texts, np.array([d.embedding for d in response.data])))
            return out

        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            results = [row for rows in pool.map(client, requests) for row in rows]
        metrics = httpx.get(f"{server.url}/metrics").text
    assert len(results) == 96
    for texts, got in results:
        np.testing.assert_allclose(got, np.stack([want[t] for t in texts]), atol=ATOL)
    assert 'bellm_requests_total{endpoint="/v1/embeddings",status="200"} 96.0' in metrics
    batches = float(re.search(r"^bellm_batch_sentences_count (\S+)$", metrics, re.M).group(1))
    sentences = float(re.search(r"^bellm_batch_sentences_sum (\S+)$", metrics, re.M).group(1))
    assert sentences == sum(len(t) for t, _ in results)
    assert batches < 96  # fewer forwards than requests: the batcher combined them


# ---------------------------------------------------------------------------------------------- info
def test_models_health_info_metrics(server, encoder):
    models = httpx.get(f"{server.url}/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "tiny"
    assert models["data"][0]["object"] == "model"
    assert [m.id for m in _client(server).models.list()] == ["tiny"]
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    info = httpx.get(f"{server.url}/info").json()
    assert info["dim"] == 64 and info["from_layer"] == 1 and info["pooling"] == "last"
    assert info["prompt"] == encoder.prompt and info["max_length"] == encoder.max_length
    assert info["limits"]["max_inputs"] == 8
    assert info["limits"]["max_batch_tokens"] == default_max_tokens_per_batch("cpu") == 4096
    assert info["limits"]["auth"] is False and "api_key" not in json.dumps(info)
    assert {"bellm", "torch", "transformers"} <= set(info["versions"])
    _post(server, {"input": ["m1", "m2"]})
    metrics = httpx.get(f"{server.url}/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in (
        "bellm_requests_total",
        "bellm_queue_inputs",
        "bellm_queue_tokens",
        "bellm_batch_tokens_bucket",
        "bellm_batch_sentences_bucket",
        "bellm_request_latency_seconds_bucket",
    ):
        assert name in metrics.text, name
