"""`glass serve` end to end: a real server process on 127.0.0.1 with the real
SmolLM2-135M-Instruct, driven by the real `openai` client and by raw HTTP."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest
import torch

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

MODEL = "smollm2-135m"
PROMPT = "The three primary colours are"
QUESTION = "What is the capital of France?"

pytestmark = pytest.mark.slow


def test_held_back_keeps_possible_stop_prefixes():
    from glass_llm.serve.decode import held_back

    assert held_back("Hello wor", ("world",)) == 3
    assert held_back("Hello", ("world", "lo!")) == 2
    assert held_back("Hello", ("x",)) == 0
    assert held_back("caf\ufffd", ()) == 4  # an incomplete character waits for its next byte


@pytest.mark.parametrize("body, param", [
    ({"prompt": "hi", "n": 9}, "n"),
    ({"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"prompt": "hi", "stop": [""]}, "stop"),
    ({"prompt": "hi", "logprobs": 2}, "logprobs"),
    ({"prompt": "hi", "top_p": 0}, "top_p"),
    ({"prompt": "hi", "glass": {"method": "griffin", "lam": 0.3}}, "glass.lam"),
    ({"prompt": "hi", "glass": "fast"}, "glass"),
    ({"prompt": "hi", "glass": {"loop_guard": -1}}, "glass.loop_guard"),
    ({"prompt": "hi", "glass": {"loop_guard": 1.5}}, "glass.loop_guard"),
    ({"prompt": 5}, "prompt"),
])
def test_parse_request_names_the_bad_field(body, param):
    from glass_llm.serve.protocol import GlassSettings, RequestError, parse_request

    with pytest.raises(RequestError) as err:
        parse_request("completion", body, GlassSettings("glass", 0.5), has_prior=True, max_batch=8)
    assert err.value.param == param and err.value.status == 400


def test_parse_request_defaults_and_batch_key():
    from glass_llm.serve.protocol import GlassSettings, parse_request

    default = GlassSettings("glass", 0.5)
    a = parse_request("completion", {"prompt": "hi", "temperature": 0}, default, True, 8)
    b = parse_request("completion", {"prompt": "ho", "temperature": 0, "max_tokens": 3}, default, True, 8)
    c = parse_request("completion", {"prompt": "hi", "temperature": 0, "glass": {"density": 0.7}}, default, True, 8)
    assert a.glass == default and a.sampling.greedy and a.n == 1 and not a.stream
    assert a.batch_key() == b.batch_key() != c.batch_key()
    assert c.glass == GlassSettings("glass", 0.7)
    g = parse_request("completion", {"prompt": "hi", "temperature": 0, "glass": {"loop_guard": 4}}, default, True, 8)
    assert g.glass == GlassSettings("glass", 0.5, loop_guard=4) and g.batch_key() != a.batch_key()
    assert g.glass.config().loop_guard == 4 and a.glass.config().loop_guard == 0
    guarded = GlassSettings("glass", 0.5, loop_guard=2)  # a server started with --loop-guard 2
    assert parse_request("completion", {"prompt": "hi"}, guarded, True, 8).glass.loop_guard == 2
    assert parse_request("completion", {"prompt": "hi", "glass": {"loop_guard": 0}}, guarded, True, 8).glass == default


def test_worker_batches_equal_settings_up_to_max_batch():
    import asyncio

    from glass_llm.serve.protocol import GlassSettings, parse_request
    from glass_llm.serve.worker import Job, Worker

    loop = asyncio.new_event_loop()
    default = GlassSettings("glass", 0.5)

    def job(glass: dict | None = None, n: int = 1) -> Job:
        body = {"prompt": "hi", "temperature": 0, "n": n, **({"glass": glass} if glass else {})}
        return Job(parse_request("completion", body, default, True, 4), loop)

    worker = Worker(load=lambda: None, max_batch=4, batch_wait=0)
    a1, a2, b1, a3, b2, a4, a5 = job(), job(), job({"method": "griffin"}), job(n=2), job({"method": "griffin"}), \
        job(), job()
    a4.cancel()  # its client left while it waited
    for j in (a1, a2, b1, a3, b2, a4, a5):
        worker._queue.put(j)
    assert worker._next_batch() == [a1, a2, a3]  # 4 rows: a5 would be the fifth
    assert a4.events.qsize() == 0 and loop.run_until_complete(a4.events.get()) == ("done", 0, "cancelled", 0)
    assert worker._next_batch() == [b1, b2]
    assert worker._next_batch() == [a5]
    worker._queue.put(None)
    assert worker._next_batch() is None
    loop.close()


def test_kept_glass_reuses_one_handle_per_config_and_restores_the_model(smollm, smollm_prior):
    """Batches of the same config share one handle (its compact buffers), yet each selects for its own
    prompt exactly as a fresh handle does; another config applies anew; close() restores the model."""
    from glass_llm import GlassConfig, apply_glass
    from glass_llm.serve.decode import KeptGlass

    model, tok = smollm
    probe = tok([QUESTION], return_tensors="pt")
    with torch.no_grad():
        plain = model(**probe).logits
        glass = GlassConfig(method="glass", density=0.5)
        kept, outs, handles = KeptGlass(model, smollm_prior), [], []
        for prompt in (PROMPT, QUESTION, PROMPT):
            kept.use(glass)
            handles.append(kept.handle)
            outs.append(model.generate(**tok([prompt], return_tensors="pt"), max_new_tokens=8, do_sample=False))
        assert handles[0] is handles[1] is handles[2]
        kept.close()
        with apply_glass(model, glass, prior=smollm_prior):
            fresh = model.generate(**tok([QUESTION], return_tensors="pt"), max_new_tokens=8, do_sample=False)
        assert torch.equal(outs[1], fresh) and torch.equal(outs[2], outs[0])
        kept.use(glass)
        first = kept.handle
        kept.use(GlassConfig(method="griffin", density=0.5))
        assert kept.handle is not first and kept.config.method == "griffin"
        kept.close()
        assert kept.handle is None and torch.equal(model(**probe).logits, plain)
        # a handle that re-selects during decoding starts each batch afresh too
        refresh = GlassConfig(method="glass-refresh:refresh=3:dense-start=2", density=0.5)
        for prompt in (PROMPT, QUESTION):
            kept.use(refresh)
            again = model.generate(**tok([prompt], return_tensors="pt"), max_new_tokens=10, min_new_tokens=10,
                                   do_sample=False)
            assert kept.handle.refreshes == 2
        kept.close()
        with apply_glass(model, refresh, prior=smollm_prior):
            fresh = model.generate(**tok([QUESTION], return_tensors="pt"), max_new_tokens=10, min_new_tokens=10,
                                   do_sample=False)
        assert torch.equal(again, fresh)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, port: int, proc: subprocess.Popen, log):
        self.port, self.proc, self.log = port, proc, log
        self.client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0,
                                    timeout=300)

    def request(self, method: str, path: str, body: bytes | dict | None = None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        conn.request(method, path, body=data, headers={"content-type": "application/json"})
        resp = conn.getresponse()
        payload = resp.read()
        conn.close()
        return resp.status, json.loads(payload)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")


@pytest.fixture(scope="module")
def server(smollm_prior):
    from glass_llm.prior_cache import find_cached_prior

    prior = find_cached_prior(MODEL, "self", 2048)  # the file smollm_prior was cached in
    port = _free_port()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "glass_llm", "serve", MODEL, "--port", str(port),
                             "--prior", str(prior), "--max-batch", "8", "--log-level", "warning"],
                            stdout=log, stderr=subprocess.STDOUT)
    srv = Server(port, proc, log)
    for _ in range(600):  # the model loads in the background; /health says 503 until then
        if proc.poll() is not None:
            pytest.fail(f"glass serve exited with {proc.returncode}:\n{srv.output()}")
        try:
            if srv.request("GET", "/health")[0] == 200:
                break
        except OSError:
            pass
        time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"glass serve did not become ready:\n{srv.output()}")
    yield srv
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    log.close()


def _reference(smollm, prior, prompt: str, raw: bool, method: str, density: float, max_new: int,
               loop_guard: int = 0) -> str:
    """What `glass generate` computes for the same prompt and settings (its code path)."""
    from glass_llm import GlassConfig, apply_glass
    from glass_llm.commands.generate import encode_prompt

    model, tok = smollm
    enc = encode_prompt(tok, prompt, raw)
    config = GlassConfig(method=method, density=density, loop_guard=loop_guard)
    with torch.no_grad(), apply_glass(model, config, prior=prior):
        out = model.generate(**enc, max_new_tokens=max_new, do_sample=False)
    return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def test_completion_equals_generate(server, smollm, smollm_prior):
    resp = server.client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0)
    assert resp.choices[0].text == _reference(smollm, smollm_prior, PROMPT, True, "glass", 0.5, 12)
    assert resp.choices[0].finish_reason in ("length", "stop")
    n_prompt = len(smollm[1](PROMPT)["input_ids"])
    assert resp.usage.prompt_tokens == n_prompt and 0 < resp.usage.completion_tokens <= 12
    assert resp.usage.total_tokens == n_prompt + resp.usage.completion_tokens
    glass = resp.model_extra["glass"]
    assert glass["method"] == "glass" and glass["density"] == 0.5 and glass["lam"] == 0.5


def test_loop_guard_per_request_equals_generate(server, smollm, smollm_prior):
    """``"glass": {"loop_guard": 2}`` decodes as ``glass generate --loop-guard 2``; on this prompt
    the guard switches steps to dense within 32 tokens, so the text differs from the unguarded one."""
    resp = server.client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=32, temperature=0,
                                            extra_body={"glass": {"loop_guard": 2}})
    guarded = _reference(smollm, smollm_prior, PROMPT, True, "glass", 0.5, 32, loop_guard=2)
    assert resp.choices[0].text == guarded != _reference(smollm, smollm_prior, PROMPT, True, "glass", 0.5, 32)
    assert resp.model_extra["glass"]["loop_guard"] == 2


def test_chat_per_request_settings_equal_generate(server, smollm, smollm_prior):
    resp = server.client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}],
                                                 max_tokens=12, temperature=0,
                                                 extra_body={"glass": {"method": "griffin", "density": 0.7}})
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == _reference(smollm, smollm_prior, QUESTION, False, "griffin", 0.7, 12)
    assert resp.model_extra["glass"]["method"] == "griffin" and resp.model_extra["glass"]["density"] == 0.7


def test_dense_equals_plain_model(server, smollm):
    model, tok = smollm
    enc = tok(PROMPT, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    plain = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    resp = server.client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0,
                                            extra_body={"glass": {"method": "dense"}})
    assert resp.choices[0].text == plain
    assert resp.model_extra["glass"]["method"] == "dense" and resp.model_extra["glass"]["density"] == 1.0


def test_streaming_equals_non_streaming(server):
    args = dict(model=MODEL, max_tokens=10, temperature=0)
    messages = [{"role": "user", "content": QUESTION}]
    whole = server.client.chat.completions.create(messages=messages, **args).choices[0].message.content
    chunks = list(server.client.chat.completions.create(messages=messages, stream=True,
                                                        stream_options={"include_usage": True}, **args))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("length", "stop")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    whole = server.client.completions.create(prompt=PROMPT, **args).choices[0].text
    chunks = list(server.client.completions.create(prompt=PROMPT, stream=True, **args))
    assert "".join(c.choices[0].text for c in chunks) == whole
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_stop_string_and_models(server):
    resp = server.client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0,
                                            stop=[" 6"], extra_body={"glass": {"method": "dense"}})
    assert resp.choices[0].finish_reason == "stop" and " 6" not in resp.choices[0].text
    assert [m.id for m in server.client.models.list().data] == [MODEL]


def test_concurrent_requests_all_answered(server):
    prompts = [f"Write one sentence about the number {i}." for i in range(8)]
    results: dict[int, object] = {}

    def ask(i: int) -> None:
        glass = {"method": "griffin"} if i % 2 else {}  # two batch keys in flight at once
        results[i] = server.client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompts[i]}], max_tokens=8, temperature=0,
            extra_body={"glass": glass} if glass else None)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert sorted(results) == list(range(8))
    for i, resp in results.items():
        assert resp.choices[0].message.content.strip()
        assert resp.choices[0].finish_reason in ("length", "stop")
        assert 0 < resp.usage.completion_tokens <= 8 and resp.usage.prompt_tokens > 0
        assert resp.model_extra["glass"]["method"] == ("griffin" if i % 2 else "glass")


def test_client_disconnect_mid_stream_frees_slot(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 4000, "temperature": 0, "stream": True,
            "glass": {"method": "dense"}}
    conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"content-type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.readline().startswith(b"data: ")  # generation is under way
    conn.close()
    for _ in range(600):  # without the disconnect, 4000 tokens would keep it busy for minutes
        status, health = server.request("GET", "/health")
        if health["requests_in_flight"] == 0:
            break
        time.sleep(0.1)
    assert status == 200 and health["requests_in_flight"] == 0
    assert server.client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, temperature=0).choices[0].text


@pytest.mark.parametrize("path, body, param, status", [
    ("/v1/completions", b'{"prompt": "hi", ', None, 400),
    ("/v1/completions", b'["not", "an", "object"]', None, 400),
    ("/v1/completions", {"prompt": "hi", "glass": {"density": 1.5}}, "glass.density", 400),
    ("/v1/completions", {"prompt": "hi", "glass": {"method": "nonsense"}}, "glass.method", 400),
    ("/v1/completions", {"prompt": "hi", "glass": {"dense": True}}, "glass.dense", 400),
    ("/v1/completions", {"prompt": "   "}, "prompt", 400),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, "max_tokens", 400),
    ("/v1/completions", {"prompt": "hi", "temperature": "hot"}, "temperature", 400),
    ("/v1/chat/completions", {"messages": []}, "messages", 400),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role", 400),
    ("/v1/completions", {"prompt": "hello " * 9000}, "prompt", 413),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 9000}, "max_tokens", 400),
])
def test_bad_requests_get_clear_errors(server, path, body, param, status):
    got, payload = server.request("POST", path, body)
    assert got == status, payload
    err = payload["error"]
    assert err["param"] == param and err["message"] and "Traceback" not in err["message"]
    assert err["type"] == "invalid_request_error"
    assert server.request("GET", "/health")[0] == 200


def test_openai_client_sees_errors_and_server_keeps_answering(server):
    with pytest.raises(openai.BadRequestError, match="density"):
        server.client.completions.create(model=MODEL, prompt="hi", extra_body={"glass": {"density": 0}})
    with pytest.raises(openai.NotFoundError):
        server.client.embeddings.create(model=MODEL, input="hi")
    assert server.client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, temperature=0).choices[0].text


def test_sigterm_finishes_in_flight_and_refuses_new(server):
    """Last test of the module: it stops the server."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 48, "temperature": 0, "stream": True,
            "glass": {"method": "dense"}}
    conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"content-type": "application/json"})
    resp = conn.getresponse()
    assert resp.readline().startswith(b"data: ")
    server.proc.send_signal(signal.SIGTERM)
    status, payload = server.request("POST", "/v1/completions", {"prompt": PROMPT, "max_tokens": 2})
    assert status == 503 and payload["error"]["code"] == "shutting_down"
    rest = resp.read().decode()
    conn.close()
    assert rest.rstrip().endswith("data: [DONE]") and '"finish_reason":"length"' in rest
    assert server.proc.wait(60) == 0
