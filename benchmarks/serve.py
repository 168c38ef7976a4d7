"""Serving throughput of `glass serve`: 1 client, then many concurrent clients,
dense against GLASS at density 0.5, side by side on the same server.

    flock /tmp/glass-heavy.lock python benchmarks/serve.py                 # per-row sets
    flock /tmp/glass-heavy.lock python benchmarks/serve.py --share-batch   # one set per batch

It starts the server on 127.0.0.1 (a free port), waits for /health, then for each
round runs both arms (dense and sparse, chosen per request with the "glass" extension
field, in alternating order) through two phases: one client sending requests one after
another, then ``--clients`` clients at once. Every phase is bounded in count and in
time. Greedy decoding, ``--max-tokens`` new tokens per request. It reports requests/s
and completion tokens/s per phase and arm (median and range over rounds) and the
sparse/dense tokens/s ratio per round with its Student-t interval, and writes
``benchmarks/results/serve-<model>[-shared].json``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TOPICS = ["the sea", "a mountain village", "the history of bread", "a lighthouse keeper", "winter in the city",
          "a chess game", "the first clock", "a river journey", "bees", "an old library", "the moon landing",
          "a street market", "volcanoes", "a violin maker", "desert nights", "the printing press"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, body: dict, timeout: float) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"content-type": "application/json"})
        resp = conn.getresponse()
        data = json.loads(resp.read())
    finally:
        conn.close()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {data}")
    return data


def phase(port: int, clients: int, per_client: int, glass: dict, max_tokens: int, deadline_s: float) -> dict:
    """``clients`` threads, each sending up to ``per_client`` requests before the deadline."""
    done, errors, lock = [], [], threading.Lock()
    stop_at = time.monotonic() + deadline_s

    def client(c: int) -> None:
        for r in range(per_client):
            if time.monotonic() > stop_at:
                return
            topic = TOPICS[(c * per_client + r) % len(TOPICS)]
            body = {"model": "bench", "messages": [{"role": "user", "content": f"Write a long story about {topic}."}],
                    "max_tokens": max_tokens, "temperature": 0, "glass": glass}
            try:
                out = post(port, body, timeout=deadline_s)
            except Exception as err:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(str(err))
                return
            with lock:
                done.append(out["usage"]["completion_tokens"])

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"clients": clients, "requests": len(done), "errors": errors, "completion_tokens": sum(done),
            "wall_s": wall, "requests_per_s": len(done) / wall, "tokens_per_s": sum(done) / wall}


def start_server(args, port: int, log) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "glass_llm", "serve", args.model, "--port", str(port), "--method", args.method,
           "--density", "0.5", "--max-batch", str(args.clients), "--log-level", "warning",
           "--prior-tokens", str(args.prior_tokens)]
    if args.share_batch:
        cmd.append("--share-batch")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    for _ in range(1200):
        if proc.poll() is not None:
            log.seek(0)
            raise SystemExit(f"the server exited with {proc.returncode}:\n{log.read().decode(errors='replace')}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not become ready in 10 minutes")


def summarize(rounds: list[dict]) -> dict:
    from glass_llm.intervals import mean_ci, spread

    out = {}
    for ph in ("single", "concurrent"):
        for arm in ("dense", "sparse"):
            runs = [r[arm][ph] for r in rounds]
            out[f"{ph}_{arm}"] = {k: asdict(spread([x[k] for x in runs])) for k in ("requests_per_s", "tokens_per_s")}
        ratios = [r["sparse"][ph]["tokens_per_s"] / r["dense"][ph]["tokens_per_s"] for r in rounds]
        out[f"{ph}_ratio_tokens_per_s"] = {"values": ratios, **mean_ci(ratios).as_dict()}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--method", default="glass", help="the sparse arm's method")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (also the server's --max-batch)")
    p.add_argument("--per-client", type=int, default=1, help="requests per concurrent client")
    p.add_argument("--single", type=int, default=3, help="requests sent one after another by the lone client")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--deadline", type=float, default=300.0, help="seconds allowed per phase")
    p.add_argument("--share-batch", action="store_true", help="serve with one neuron set per batch")
    p.add_argument("--prior-tokens", type=int, default=2048, help="tokens for the prior if none is cached")
    args = p.parse_args(argv)

    from glass_llm.bench import machine_info

    port = free_port()
    arms = {"dense": {"method": "dense"}, "sparse": {"method": args.method, "density": 0.5}}
    with tempfile.TemporaryFile() as log:
        proc = start_server(args, port, log)
        try:
            phase(port, 1, 1, arms["sparse"], 8, args.deadline)  # warm-up
            rounds = []
            for i in range(args.rounds):
                order = ["dense", "sparse"] if i % 2 == 0 else ["sparse", "dense"]
                result = {}
                for arm in order:
                    result[arm] = {
                        "single": phase(port, 1, args.single, arms[arm], args.max_tokens, args.deadline),
                        "concurrent": phase(port, args.clients, args.per_client, arms[arm], args.max_tokens,
                                            args.deadline)}
                    for ph, r in result[arm].items():
                        print(f"round {i} {arm:6s} {ph:10s}: {r['requests']} requests, {r['errors'] and 'ERRORS ' or ''}"
                              f"{r['requests_per_s']:.2f} req/s, {r['tokens_per_s']:.1f} tok/s", flush=True)
                rounds.append(result)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
    out = {"machine": machine_info(), "dtype": "float32", "model": args.model, "density": 0.5, "method": args.method,
           "share_batch": args.share_batch, "clients": args.clients, "per_client": args.per_client,
           "single_requests": args.single, "max_tokens": args.max_tokens,
           "command": "flock /tmp/glass-heavy.lock python benchmarks/serve.py " + " ".join(argv or sys.argv[1:]),
           "rounds": rounds, "summary": summarize(rounds)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"serve-{args.model}{'-shared' if args.share_batch else ''}.json"
    from glass_llm.io import atomic_write

    atomic_write(path, json.dumps(out, indent=1))
    for key, value in out["summary"].items():
        print(key, json.dumps(value))
    print(f"wrote {path}")
    lost = sum(len(r[a][ph]["errors"]) for r in rounds for a in r for ph in r[a])
    return 1 if lost else 0


if __name__ == "__main__":
    raise SystemExit(main())
