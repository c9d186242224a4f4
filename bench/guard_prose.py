"""False alarms of the guard's first stage on people's technical prose it never trained on:
the 4,000 sentences of the Debian Administrator's Handbook in
crates/bulwark-engine/tests/data/human_sentences.txt (CC-BY-SA-3.0, see
bench/human_corpus.py; the guard's trainer never reads it), scanned one by one and as
passages of about 1 KB (consecutive sentences), with `bulwark scan --jsonl`. With
OTHER=path/to/bulwark, another build (e.g. the previous commit's) is scanned on the same
texts in the same run. Prints one JSON line per build and form, and the blocked texts with
BLOCKED=1.

    .venv/bin/python bench/guard_prose.py
    OTHER=/tmp/bulwark.old .venv/bin/python bench/guard_prose.py
"""
import json
import os
import subprocess

from common import BULWARK, ROOT

SENTENCES = ROOT / "crates/bulwark-engine/tests/data/human_sentences.txt"


def texts():
    lines = [l for l in SENTENCES.read_text().splitlines() if l and not l.startswith("#")]
    out = [("sentence", l) for l in lines]
    cur = ""
    for l in lines:
        cur += (" " if cur else "") + l
        if len(cur) >= 1024:
            out.append(("passage 1 KB", cur))
            cur = ""
    return out


def scan(binary, rows):
    stdin = "".join(json.dumps({"text": t}) + "\n" for _, t in rows)
    out = subprocess.run([binary, "scan", "--jsonl"], input=stdin, capture_output=True, text=True, check=True)
    return [json.loads(l) for l in out.stdout.splitlines()]


def main():
    rows = texts()
    builds = [("this build", BULWARK)] + ([("other", os.environ["OTHER"])] if os.environ.get("OTHER") else [])
    for name, binary in builds:
        reports = scan(binary, rows)
        for form in ("sentence", "passage 1 KB"):
            got = [r["verdict"] for (f, _), r in zip(rows, reports) if f == form]
            print(json.dumps({"bench": "guard_prose", "build": name, "form": form, "texts": len(got),
                              "blocked": got.count("block"), "flagged": got.count("flag"),
                              "false_blocks": round(got.count("block") / len(got), 4)}))
        if os.environ.get("BLOCKED"):
            for (f, t), r in zip(rows, reports):
                if r["verdict"] == "block":
                    print(f"{name}\t{r['injection_score']:.2f}\t{t[:160]}")


if __name__ == "__main__":
    main()
