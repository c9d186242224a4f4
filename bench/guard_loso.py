"""Side by side, on the same held-out texts: the first stage fitted without each text's
source (`loso`'s LOSO_OUT lines) and another offline detector,
prompt-injection-sanitizer 0.1.1 (MIT; regexes, Unicode normalisation, leetspeak and
typoglycemia, blocking at its own documented MODIFICATION_THRESHOLD, risk >= 0.3), which
was tuned on none of these sources.

Usage: python bench/guard_loso.py LOSO_OUT.jsonl   (bench/guard_loso.sh runs it)
Prints Markdown tables per source and per language, and each detector's time per KB.
"""
import collections
import json
import sys
import time

import prompt_injection_sanitizer as pis


def main(path):
    rows = [json.loads(l) for l in open(path)]
    started = time.perf_counter()
    other = [pis.sanitize(r["text"]).risk_score >= pis._core.MODIFICATION_THRESHOLD for r in rows]
    secs = time.perf_counter() - started
    kb = sum(len(r["text"].encode()) for r in rows) / 1024
    for key in ("source", "lang", "kind"):
        tally = collections.defaultdict(lambda: [0, 0, 0, 0, 0, 0])
        for r, o in zip(rows, other):
            t = tally[r[key]]
            ours = r["score"] >= r["threshold"]
            if r["label"]:
                t[0] += 1
                t[1] += ours
                t[2] += o
            else:
                t[3] += 1
                t[4] += ours
                t[5] += o
        print(f"\n| {key} | attacks | Bulwark first stage: recall | sanitizer: recall | benign | "
              f"Bulwark: false blocks | sanitizer: false blocks |\n|---|---|---|---|---|---|---|")
        for k in sorted(tally):
            a, ra, oa, b, fb, ob = tally[k]
            rate = lambda x, n: f"{x / n:.3f}" if n else "–"
            pct = lambda x, n: f"{100 * x / n:.1f}%" if n else "–"
            print(f"| {k} | {a} | {rate(ra, a)} | {rate(oa, a)} | {b} | {pct(fb, b)} | {pct(ob, b)} |")
    print(f"\nprompt-injection-sanitizer: {1e3 * secs / kb:.3f} ms per KB over {kb:.0f} KB "
          f"({len(rows)} texts, one core, Python)")


if __name__ == "__main__":
    main(sys.argv[1])
