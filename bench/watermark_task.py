"""What the watermark costs on a small task: the default model answers short factual
questions (the capital of a country, written for this benchmark) through `bulwark serve`,
once from a local model with the mark and once from the same GGUF without it, the same
question, seed and sampling back to back (order alternating), with the OpenAI SDK.
Counted right when the answer names the capital (or one of its accepted spellings).
Greedy (temperature 0) once per question, and SEEDS seeds at the engine's default
sampling. Prints one JSON line per arm and the paired counts (right only with the mark,
right only without).

    .venv/bin/python bench/watermark_task.py          # SEEDS=4 DELTA=2.0

The mark's strength is DELTA (`watermark_delta`); γ is the engine's (0.25).
"""
import json
import os
import tempfile
import time

import openai

from common import BULWARK, MODEL, start_printing, stop, wait_http

SEEDS = int(os.environ.get("SEEDS", "4"))
DELTA = float(os.environ.get("DELTA", "2.0"))
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

# country: accepted spellings of its capital (lower case)
CAPITALS = {
    "France": ["paris"], "Germany": ["berlin"], "Italy": ["rome"], "Spain": ["madrid"],
    "Portugal": ["lisbon"], "the United Kingdom": ["london"], "Ireland": ["dublin"],
    "the Netherlands": ["amsterdam"], "Belgium": ["brussels"], "Austria": ["vienna"],
    "Switzerland": ["bern", "berne"], "Poland": ["warsaw"], "the Czech Republic": ["prague"],
    "Hungary": ["budapest"], "Greece": ["athens"], "Sweden": ["stockholm"], "Norway": ["oslo"],
    "Denmark": ["copenhagen"], "Finland": ["helsinki"], "Russia": ["moscow"], "Ukraine": ["kyiv", "kiev"],
    "Turkey": ["ankara"], "Egypt": ["cairo"], "Kenya": ["nairobi"], "Nigeria": ["abuja"],
    "South Africa": ["pretoria", "cape town"], "Morocco": ["rabat"], "Ethiopia": ["addis ababa"],
    "Japan": ["tokyo"], "China": ["beijing"], "South Korea": ["seoul"], "India": ["new delhi", "delhi"],
    "Pakistan": ["islamabad"], "Thailand": ["bangkok"], "Vietnam": ["hanoi"], "Indonesia": ["jakarta"],
    "the Philippines": ["manila"], "Iran": ["tehran"], "Iraq": ["baghdad"], "Saudi Arabia": ["riyadh"],
    "Israel": ["jerusalem"], "Australia": ["canberra"], "New Zealand": ["wellington"],
    "Canada": ["ottawa"], "the United States": ["washington"], "Mexico": ["mexico city"],
    "Brazil": ["brasilia", "brasília"], "Argentina": ["buenos aires"], "Chile": ["santiago"],
    "Peru": ["lima"], "Colombia": ["bogota", "bogotá"], "Venezuela": ["caracas"], "Cuba": ["havana"],
    "Romania": ["bucharest"], "Bulgaria": ["sofia"], "Serbia": ["belgrade"], "Croatia": ["zagreb"],
    "Iceland": ["reykjavik", "reykjavík"], "Afghanistan": ["kabul"], "Nepal": ["kathmandu"],
}


def ask(client, model, country, **kw):
    r = client.chat.completions.create(
        model=model, max_tokens=24,
        messages=[{"role": "user", "content": f"What is the capital of {country}? Answer with the city's name."}], **kw)
    return r.choices[0].message.content or ""


def main():
    with tempfile.TemporaryDirectory() as tmp:
        cfg = os.path.join(tmp, "bulwark.toml")
        with open(cfg, "w") as f:
            for name, mark in (("marked", True), ("plain", False)):
                f.write(f"""
[[local_models]]
name = "{name}"
path = "{MODEL}"
sha256 = "{GGUF_SHA256}"
watermark = {"true" if mark else "false"}
watermark_delta = {DELTA}
""")
            f.write("\n[guard]\nenabled = false\n")
        gw, url = start_printing([BULWARK, "serve", "--listen", "127.0.0.1:0", "--config", cfg],
                                 env={**os.environ, "BULWARK_DATA_DIR": f"{tmp}/data", "BULWARK_LOG": "warn"})
        try:
            wait_http(f"{url}/readyz")
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
            runs = [("greedy", {"temperature": 0.0})] + [(f"seed {s}", {"seed": s}) for s in range(SEEDS)]
            right = {(arm, m): 0 for arm in ("greedy", "sampled") for m in ("marked", "plain")}
            asked = {"greedy": 0, "sampled": 0}
            only = {(arm, m): 0 for arm in ("greedy", "sampled") for m in ("marked", "plain")}
            started = time.time()
            for i, (country, names) in enumerate(CAPITALS.items()):
                for j, (label, kw) in enumerate(runs):
                    arm = "greedy" if label == "greedy" else "sampled"
                    order = ("marked", "plain") if (i + j) % 2 == 0 else ("plain", "marked")
                    got = {m: any(n in ask(client, m, country, **kw).lower() for n in names) for m in order}
                    asked[arm] += 1
                    for m in order:
                        right[(arm, m)] += got[m]
                    if got["marked"] != got["plain"]:
                        only[(arm, "marked" if got["marked"] else "plain")] += 1
            for arm in ("greedy", "sampled"):
                print(json.dumps({"bench": "watermark_task", "arm": arm, "delta": DELTA, "questions": asked[arm],
                                  "accuracy_plain": round(right[(arm, "plain")] / asked[arm], 3),
                                  "accuracy_marked": round(right[(arm, "marked")] / asked[arm], 3),
                                  "right_only_plain": only[(arm, "plain")],
                                  "right_only_marked": only[(arm, "marked")]}))
            print(json.dumps({"bench": "watermark_task", "seconds": round(time.time() - started, 1)}))
        finally:
            stop(gw)


if __name__ == "__main__":
    main()
