"""Local engine: Bulwark's in-process llama.cpp against llama-cpp-python on the same GGUF,
thread count and prompt, in the same run; aggregate decode at several concurrencies; and
cold start to first streamed token. Prints JSON lines."""
import http.client
import json
import os
import pathlib
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.parse

from common import BULWARK, MODEL, start_printing, stop, wait_http

THREADS = int(os.environ.get("BENCH_THREADS", "2"))
GEN = int(os.environ.get("BENCH_GEN_TOKENS", "128"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "5"))
PROMPT = ("The history of the city begins with a small settlement on the river, where traders "
          "met to exchange grain, salt and cloth. Over the centuries it grew into a market town, "
          "then a fortified city with walls, gates and a cathedral. ") * 3


def reference_runner():
    """llama-cpp-python: prompt eval time and per-token decode time, greedy. Returns a
    function doing one run."""
    from llama_cpp import Llama
    llm = Llama(model_path=str(MODEL), n_ctx=2048, n_threads=THREADS, n_threads_batch=THREADS, n_batch=512,
                verbose=False)
    tokens = llm.tokenize(PROMPT.encode(), add_bos=True, special=True)

    def run():
        llm.reset()  # otherwise generate() reuses the cached prompt prefix and skips prefill
        t0 = time.perf_counter()
        times = []
        for i, _tok in enumerate(llm.generate(tokens, top_k=1, temp=0.0, reset=True)):
            times.append(time.perf_counter())
            if i + 1 >= GEN:
                break
        return {"prompt_tokens": len(tokens), "ttft_s": times[0] - t0,
                "decode_tps": (len(times) - 1) / (times[-1] - times[0])}
    return run


def stream_completion(base, body):
    """POSTs a streaming completion; returns (t_sent, [arrival times of content chunks], usage)."""
    u = urllib.parse.urlparse(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    arrivals, usage, buf = [], None, b""
    while True:
        line = resp.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        ev = json.loads(line[6:])
        if ev.get("usage"):
            usage = ev["usage"]
        if ev.get("choices") and ev["choices"][0].get("text"):
            arrivals.append(time.perf_counter())
    conn.close()
    return t0, arrivals, usage


def bulwark_single(base):
    body = {"model": "smollm2", "prompt": PROMPT, "max_tokens": GEN, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    t0, arr, usage = stream_completion(base, body)
    return {"prompt_tokens": usage["prompt_tokens"], "ttft_s": arr[0] - t0,
            "decode_tps": (usage["completion_tokens"] - 1) / (arr[-1] - arr[0])}


def in_process_single(prompt_file):
    exe = str(pathlib.Path(BULWARK).parent / "examples/batch_throughput")
    out = subprocess.run([exe, str(MODEL), str(THREADS), str(GEN), prompt_file], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def in_process_batching():
    """The engine alone (no HTTP, no client on the CPU): the Rust example."""
    exe = str(pathlib.Path(BULWARK).parent / "examples/batch_throughput")
    out = subprocess.run([exe, str(MODEL), str(THREADS), str(GEN)], capture_output=True, text=True, check=True)
    return [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]


def bulwark_concurrent(base, n):
    """N streaming requests at once from N curl processes (a client that costs next to no
    CPU, so the two cores go to the server); every request generates exactly GEN tokens."""
    body = json.dumps({"model": "smollm2", "prompt": "Once upon a time", "max_tokens": GEN, "temperature": 0,
                       "ignore_eos": True, "stream": True})
    argv = ["curl", "-sfN", "-o", "/dev/null", "-H", "Content-Type: application/json", "-d", body,
            f"{base}/v1/completions"]
    start = time.perf_counter()
    procs = [subprocess.Popen(argv) for _ in range(n)]
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - start
    assert codes == [0] * n, codes
    return {"streams": n, "tokens": n * GEN, "wall_s": wall, "aggregate_tps": n * GEN / wall}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cold_start():
    """Process spawn to the first streamed token of a chat completion, default config."""
    body = json.dumps({"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Hi"}],
                       "max_tokens": 1, "stream": True})
    times = []
    for _ in range(5):
        port = free_port()
        t0 = time.perf_counter()
        p = subprocess.Popen([BULWARK, "serve", "--listen", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env={**os.environ, "BULWARK_LOG": "warn",
                                                             "BULWARK_MODEL_DIR": str(MODEL.parent)})
        try:
            while True:
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
                    resp = conn.getresponse()
                except OSError:
                    time.sleep(0.002)
                    continue
                if resp.status == 503:  # still loading
                    resp.read()
                    time.sleep(0.002)
                    continue
                assert resp.status == 200, resp.read()
                while b'"content":"' not in resp.readline() or False:
                    pass
                times.append(time.perf_counter() - t0)
                break
        finally:
            stop(p)
    return times


def main():
    ref_run = reference_runner()
    tmp = pathlib.Path(tempfile.mkdtemp())
    cfg = tmp / "bulwark.toml"
    cfg.write_text(f'[[local_models]]\nname = "smollm2"\npath = "{MODEL}"\nthreads = {THREADS}\nparallel = 8\n'
                   f'ctx_size = 2048\n')
    gw, url = start_printing([BULWARK, "serve", "--listen", "127.0.0.1:0", "--config", str(cfg)],
                             env={**os.environ, "BULWARK_LOG": "warn"})
    try:
        wait_http(f"{url}/readyz")
        prompt_file = tmp / "prompt.txt"
        prompt_file.write_text(PROMPT)
        ref_run(), bulwark_single(url)  # warm-up
        # Interleaved, so that machine noise hits all three alike.
        ref, ours, engine = [], [], []
        # A pause before each run lets the previous run's OpenMP threads stop spinning.
        for _ in range(REPEATS):
            time.sleep(0.5)
            ref.append(ref_run())
            time.sleep(0.5)
            ours.append(bulwark_single(url))
            time.sleep(0.5)
            engine.append(in_process_single(str(prompt_file)))
        conc = [bulwark_concurrent(url, n) for n in (1, 4, 8)]
    finally:
        stop(gw)
    med = lambda runs, k: statistics.median(r[k] for r in runs)
    single = {
        "threads": THREADS, "prompt_tokens": ref[0]["prompt_tokens"], "gen_tokens": GEN,
        "reference_prompt_tps": ref[0]["prompt_tokens"] / med(ref, "ttft_s"),
        "bulwark_prompt_tps": ours[0]["prompt_tokens"] / med(ours, "ttft_s"),
        "reference_decode_tps": med(ref, "decode_tps"),
        "bulwark_decode_tps": med(ours, "decode_tps"),
        "engine_prompt_tps": engine[0]["prompt_tokens"] / med(engine, "ttft_s"),
        "engine_decode_tps": med(engine, "decode_tps"),
    }
    single["engine_decode_ratio"] = single["engine_decode_tps"] / single["reference_decode_tps"]
    single["decode_ratio"] = single["bulwark_decode_tps"] / single["reference_decode_tps"]
    single["prompt_ratio"] = single["bulwark_prompt_tps"] / single["reference_prompt_tps"]
    print(json.dumps({"single_stream": single}), flush=True)
    base = conc[0]["aggregate_tps"]
    for c in conc:
        c["vs_single"] = c["aggregate_tps"] / base
    print(json.dumps({"concurrency_http": conc}), flush=True)
    print(json.dumps({"concurrency_in_process": in_process_batching()}), flush=True)
    cs = cold_start()
    print(json.dumps({"cold_start_s": {"runs": cs, "median": statistics.median(cs)}}), flush=True)


if __name__ == "__main__":
    main()
