"""The guard on documents and source code, the texts a gateway sees as tool results and
retrieved context: how many benign ones it blocks, and how many with one attack hidden
inside it finds. Same texts for each detector, same run. Prints JSON lines.

The texts: the documentation (*.md) and the first Rust sources of every crate in
Cargo.lock, from the local cargo registry (`cargo build` fetched them; the lock file pins
each version, so every machine reads the same files), cut at blank lines into pieces of
about 1 KB and 4 KB (prose) and 2 KB (code), and 300 short snippets of each (2 to 12
lines of source, 1 to 6 of documentation). None of it is in the guard's training data.
Attack documents: 300 other 1 KB/4 KB prose pieces, each with one attack of the tuning
split (prepare.py's; never trained on; injections, not neuralchemy's harmful requests)
placed at a paragraph boundary or at the end of a paragraph.

Usage: python documents.py DATA_DIR BULWARK_BIN   (DATA_DIR: prepare.py's output)
"""
import json
import pathlib
import random
import subprocess
import sys
import time
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "crates/bulwark-guard/train"))
from prepare import is_tuning  # noqa: E402
# The trainer's documents.py (first on the path, before this file's own directory): the
# same cutting and hiding as the documents model's calibration pieces.
from documents import chunks, hide_paragraph as hide, snippet  # noqa: E402


def corpus(data):
    lock = tomllib.loads((ROOT / "Cargo.lock").read_text())
    registry = pathlib.Path.home() / ".cargo/registry/src"
    srcs = sorted(registry.iterdir())
    docs, code, pages, sources = [], [], [], []
    for pkg in lock["package"]:
        d = next((s / f"{pkg['name']}-{pkg['version']}" for s in srcs
                  if (s / f"{pkg['name']}-{pkg['version']}").is_dir()), None)
        if d is None:
            continue
        for f in sorted(d.glob("*.md")):
            t = f.read_text(errors="replace")
            pages.append(t)
            for size in (1024, 4096):
                docs += [{"text": c, "kind": f"prose {size // 1024} KB"} for c in chunks(t, size)]
        for f in sorted(d.glob("src/**/*.rs"))[:3]:
            sources.append(f.read_text(errors="replace"))
            code += [{"text": c, "kind": "code 2 KB"} for c in chunks(sources[-1], 2048)]
    rng = random.Random(3)
    rng.shuffle(docs)
    rng.shuffle(code)
    train = [json.loads(l) for l in open(pathlib.Path(data) / "train.jsonl")]
    attacks = [r["text"] for r in train if r["label"] == 1 and is_tuning(r["text"])
               and r.get("category", "") != "jailbreak" and len(r["text"].split()) <= 60]
    rows = [{**d, "label": 0} for d in docs[:600] + code[:300]]
    rows += [{"text": hide(d["text"], rng.choice(attacks), rng), "kind": f"attack in {d['kind']}", "label": 1}
             for d in docs[600:900]]
    # Short snippets, as a chat turn quotes them: 2 to 12 lines of source, 1 to 6 of
    # documentation, 3 to 64 words (the first model's texts).
    srng = random.Random(4)
    rows += [{"text": snippet(sources, 2, 12, srng), "kind": "code snippet", "label": 0} for _ in range(300)]
    rows += [{"text": snippet(pages, 1, 6, srng), "kind": "prose snippet", "label": 0} for _ in range(300)]
    return rows


def main(data, bulwark):
    rows = corpus(data)
    payload = "".join(json.dumps({"text": r["text"]}) + "\n" for r in rows)
    kinds = sorted({r["kind"] for r in rows})

    def report(name, blocked, secs):
        out = {"detector": name, "texts_per_s": round(len(rows) / secs, 1)}
        for k in kinds:
            b = [x for x, r in zip(blocked, rows) if r["kind"] == k]
            out[f"{k}: blocked"] = f"{sum(b)} of {len(b)}"
        print(json.dumps(out), flush=True)

    for name, extra in [("bulwark, first stage (default)", []), ("bulwark, both stages (--encoder)", ["--encoder"])]:
        t0 = time.perf_counter()
        out = subprocess.run([bulwark, "scan", "--jsonl", *extra], input=payload, capture_output=True, text=True,
                             check=True).stdout
        report(name, [json.loads(l)["verdict"] == "block" for l in out.splitlines()], time.perf_counter() - t0)
    try:
        from guardify import detect
    except ImportError:
        return
    detect("warm up")
    t0 = time.perf_counter()
    blocked = [detect(r["text"])["label"] == "injection" for r in rows]
    report("prompt-guardrail 1.0.1", blocked, time.perf_counter() - t0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
