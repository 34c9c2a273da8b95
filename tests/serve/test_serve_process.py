"""`bellm serve` as a subprocess: settings refused before loading, the openai client against Encoder.encode, the
log lines, SIGTERM with requests in flight (all answered); one end-to-end run on the real SmolLM2 (slow)."""

from __future__ import annotations

import concurrent.futures
import re
import signal
import time

import httpx
import numpy as np
import pytest
from _serve_helpers import SENTENCES, free_port, serve_subprocess, tiny_encoder, wait_until
from openai import OpenAI

from bellm.encoder import Encoder

ATOL = 1e-5


@pytest.mark.parametrize(
    "args,message",
    [
        (["--max-inputs", "0"], "max_inputs must be a positive integer, got 0"),
        (["--max-wait-ms", "-1"], "max_wait_ms must be >= 0, got -1"),
        (["--port", "70000"], "--port 70000 is not a port"),
        (["--api-key", ""], "api_key is empty"),
        (["--model", "/nonexistent/model"], "does not exist"),
    ],
)
def test_bad_settings_fail_in_one_line_before_loading(args, message, capsys):
    from bellm.cli import main

    t0 = time.perf_counter()
    assert main(["serve", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.strip().splitlines()[-1].startswith("bellm serve: error:")
    assert time.perf_counter() - t0 < 30


def _embeddings(client: OpenAI, texts, **kw) -> np.ndarray:
    return np.array([d.embedding for d in client.embeddings.create(input=texts, model="any", **kw).data])


def test_subprocess_serves_encode_and_drains_on_sigterm(tmp_path):
    model_dir = tmp_path / "tiny"
    tiny_encoder().save_pretrained(model_dir)  # from_layer=1 travels in bellm_encoder.json
    offline = Encoder.from_pretrained(model_dir, device="cpu")
    port, log = free_port(), tmp_path / "serve.log"
    args = [
        "--model",
        str(model_dir),
        "--device",
        "cpu",
        "--max-batch-tokens",
        "512",
        "--max-queue-tokens",
        "100000",
    ]
    with serve_subprocess(*args, port=port, log_path=log, env={"BELLM_API_KEY": "k3y"}) as proc:
        url = f"http://127.0.0.1:{port}"
        client = OpenAI(base_url=f"{url}/v1", api_key="k3y", max_retries=0)
        want = offline.encode(SENTENCES, normalize_embeddings=True)
        np.testing.assert_allclose(_embeddings(client, SENTENCES), want, atol=ATOL)
        np.testing.assert_allclose(_embeddings(client, SENTENCES, encoding_format="float"), want, atol=ATOL)
        assert httpx.get(f"{url}/info").status_code == 401  # BELLM_API_KEY was picked up

        # SIGTERM while large requests are queued and running: every one is answered, then the process exits.
        texts = [f"{s} number {i} " + "padding words " * (i % 9) for i, s in enumerate(SENTENCES * 4)]
        auth = {"Authorization": "Bearer k3y"}

        def post(n: int) -> httpx.Response:
            body = {"input": texts[n:] + texts[:n], "encoding_format": "float"}
            return httpx.post(f"{url}/v1/embeddings", json=body, headers=auth, timeout=300)

        def in_flight() -> float:
            metrics = httpx.get(f"{url}/metrics", headers=auth).text
            return float(re.search(r"^bellm_requests_in_flight (\S+)$", metrics, re.M).group(1))

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(post, n) for n in range(6)]
            wait_until(lambda: in_flight() >= 4, timeout=120, what="requests in flight")
            proc.send_signal(signal.SIGTERM)
            responses = [f.result(300) for f in futures]
        # uvicorn re-raises the signal once it has shut down cleanly: the conventional exit status for SIGTERM
        assert proc.wait(120) in (0, -signal.SIGTERM)
    assert [r.status_code for r in responses] == [200] * 6
    got = np.array([d["embedding"] for d in responses[3].json()["data"]])
    np.testing.assert_allclose(
        got, offline.encode(texts[3:] + texts[:3], normalize_embeddings=True), atol=ATOL
    )

    text = log.read_text()
    assert re.search(
        r"ready: model=tiny dim=64 from_layer=1/3 pooling=last max_length=512 max_batch_tokens=512", text
    )
    request_lines = re.findall(
        r"request id=\w+ POST /v1/embeddings status=200 inputs=(\d+) tokens=\d+ .*ms=", text
    )
    assert request_lines.count(str(len(texts))) == 6
    after_signal = text[text.index("Shutting down") :]
    assert "POST /v1/embeddings status=200" in after_signal  # some were still running when SIGTERM came
    assert "stopped: every accepted request was answered" in after_signal


@pytest.mark.slow
def test_real_smollm2_bellm_serve_alone(tmp_path):
    """`bellm serve` with no model argument serves the bundled SmolLM2; the openai client gets Encoder.encode."""
    from bellm.models import default_model

    try:
        default_model(download=False)
    except FileNotFoundError:
        pytest.skip("the SmolLM2 GGUF is not available")
    port, log = free_port(), tmp_path / "serve.log"
    sentences = ["A man is playing a flute.", "A man plays the flute.", "The stock market crashed today."]
    with serve_subprocess(port=port, log_path=log, startup_s=900):  # loading is slow on a busy machine
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        response = client.embeddings.create(input=sentences, model="SmolLM2-135M-Instruct")
        info = httpx.get(f"http://127.0.0.1:{port}/info").json()
    got = np.array([d.embedding for d in response.data])
    assert response.model == "SmolLM2-135M-Instruct" and info["dim"] == 576 and info["pooling"] == "last"
    want = Encoder.from_pretrained(None, device="cpu").encode(sentences, normalize_embeddings=True)
    np.testing.assert_allclose(got, want, atol=ATOL)
    assert got[0] @ got[1] > got[0] @ got[2]
