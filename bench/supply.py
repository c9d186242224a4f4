"""Model supply chain benchmarks (issue 5), all in one run:

1. Hashing (SHA-256 + BLAKE3 in one read) and scanning throughput on the default model
   and on a generated 1 GiB GGUF, against `sha256sum`, `openssl dgst -sha256` and
   `cat > /dev/null` (the read ceiling) on the same files in the same run.
2. Pickle scanning side by side with picklescan and modelscan (PyPI) on the corpus
   `bench/supply_corpus.py` writes: detections (true and false positives) and time.

Run through `bench/run.sh supply`; prints one JSON object per result.
"""
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
BULWARK = str(ROOT / "target/release/bulwark")
THROUGHPUT = str(ROOT / "target/release/examples/supply_throughput")
VENV = pathlib.Path(sys.executable).parent
REPEAT = int(os.environ.get("REPEAT", "5"))


def timed(argv, **kw):
    t = time.perf_counter()
    p = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, **kw)
    return time.perf_counter() - t, p


def median_time(argv, **kw):
    times = []
    for _ in range(REPEAT):
        t, p = timed(argv, **kw)
        times.append(t)
    return statistics.median(times), p


def gguf_1gib(path):
    """A valid GGUF: one F32 tensor of 256 Mi elements (1 GiB of random-looking data)."""
    import struct

    def s(x):
        b = x.encode()
        return struct.pack("<Q", len(b)) + b

    header = b"GGUF" + struct.pack("<IQQ", 3, 1, 1)
    header += s("general.architecture") + struct.pack("<I", 8) + s("llama")
    header += s("big.weight") + struct.pack("<I", 2) + struct.pack("<QQ", 16384, 16384) + struct.pack("<IQ", 0, 0)
    header += b"\0" * (-len(header) % 32)
    with open(path, "wb") as f:
        f.write(header)
        block = os.urandom(1 << 20)
        for _ in range(1024):
            f.write(block)


def throughput(files):
    for name, path in files:
        size = os.path.getsize(path)
        # Warm the page cache once, so every tool reads from memory: the comparison is
        # of hashing, not of this machine's shared disk.
        subprocess.run(["cat", path], stdout=subprocess.DEVNULL)
        out = subprocess.run([THROUGHPUT, path, str(REPEAT)], capture_output=True, text=True, check=True).stdout
        bulwark = json.loads(out)
        base = {}
        for tool, argv in [
            ("cat", ["sh", "-c", f"cat '{path}' > /dev/null"]),
            ("sha256sum", ["sha256sum", path]),
            ("openssl_sha256", ["openssl", "dgst", "-sha256", path]),
        ]:
            t, _ = median_time(argv)
            base[tool] = size / t / 1e9
        print(json.dumps({
            "bench": "supply_hash", "file": name, "bytes": size,
            "bulwark_hash_gbps": round(bulwark["hash_gbps"], 3),
            "bulwark_scan_gbps": round(bulwark["scan_gbps"], 3),
            "bulwark_scan_ms": round(bulwark["scan_ms"], 3),
            **{f"{k}_gbps": round(v, 3) for k, v in base.items()},
        }), flush=True)


def truth(name):
    return name.startswith("malicious_")


def score(name, detected, files, seconds, extra=None):
    tp = sum(1 for f in files if truth(f) and f in detected)
    fp = sum(1 for f in files if not truth(f) and f in detected)
    fn = sum(1 for f in files if truth(f) and f not in detected)
    missed = sorted(f for f in files if truth(f) and f not in detected)
    flagged = sorted(f for f in files if not truth(f) and f in detected)
    print(json.dumps({
        "bench": "supply_pickle", "tool": name, "files": len(files),
        "malicious": sum(map(truth, files)), "true_positives": tp, "false_positives": fp,
        "false_negatives": fn, "missed": missed, "false_alarms": flagged,
        "median_seconds": round(seconds, 4), **(extra or {}),
    }), flush=True)


def pickles(corpus):
    files = sorted(os.listdir(corpus))
    # Bulwark: a file with any high-severity finding is detected.
    t, p = median_time([BULWARK, "models", "scan", "--json", corpus])
    detected = set()
    for line in p.stdout.splitlines():
        r = json.loads(line)
        if any(f["severity"] == "high" for f in r["findings"]):
            detected.add(os.path.basename(r["path"]))
    score("bulwark", detected, files, t)
    # picklescan: "PATH: dangerous import ... FOUND".
    t, p = median_time([str(VENV / "picklescan"), "--path", corpus])
    detected = {os.path.basename(l.split(":")[0]) for l in (p.stdout + p.stderr).splitlines() if "dangerous import" in l}
    score("picklescan 1.0.5", detected, files, t)
    # modelscan: issues of severity HIGH or CRITICAL, by source file.
    with tempfile.TemporaryDirectory() as d:
        rep = os.path.join(d, "r.json")
        t, p = median_time([str(VENV / "modelscan"), "-p", corpus, "-r", "json", "-o", rep])
        r = json.load(open(rep))
    detected = {i["source"].split(":")[0] for i in r["issues"] if i["severity"] in ("HIGH", "CRITICAL")}
    score("modelscan 0.8.8", detected, files, t, {"errors": [e["category"] + ": " + e["source"] for e in r.get("errors", [])],
                                                 "skipped": len(files) - len({s.split(":")[0] for s in r["summary"]["scanned"]["scanned_files"]})})


def main():
    with tempfile.TemporaryDirectory() as d:
        big = os.path.join(d, "big.gguf")
        gguf_1gib(big)
        throughput([("SmolLM2-135M-Instruct.Q4_1.gguf", str(ROOT / "models/SmolLM2-135M-Instruct.Q4_1.gguf")), ("generated 1 GiB GGUF", big)])
    with tempfile.TemporaryDirectory() as corpus:
        subprocess.run([sys.executable, str(ROOT / "bench/supply_corpus.py"), corpus], check=True, stdout=subprocess.DEVNULL)
        pickles(corpus)


if __name__ == "__main__":
    main()
