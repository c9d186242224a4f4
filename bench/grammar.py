"""Constrained decoding: Bulwark's engine in-process against llama-cpp-python, both on
llama.cpp's grammar sampler with the same GBNF grammar (written by the engine's own JSON
Schema conversion, `schema_gbnf`), the same GGUF, thread count and prompt, greedy, in
the same run; and each one's unconstrained decode beside it, for the grammar's cost.
Prints JSON lines.

    bench/run.sh grammar
"""
import json
import os
import pathlib
import statistics
import subprocess
import tempfile
import time

from common import BULWARK, MODEL

THREADS = int(os.environ.get("BENCH_THREADS", "2"))
GEN = int(os.environ.get("BENCH_GEN_TOKENS", "128"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "5"))
PROMPT = "<|im_start|>user\nList the names of as many European cities as you can, as a JSON array.<|im_end|>\n<|im_start|>assistant\n"
# Long enough that neither run can finish before GEN tokens: every run decodes GEN tokens.
SCHEMA = {"type": "array", "items": {"type": "string", "maxLength": 16}, "minItems": 200}
EXAMPLES = pathlib.Path(BULWARK).parent / "examples"


def gbnf():
    out = subprocess.run([str(EXAMPLES / "schema_gbnf")], input=json.dumps(SCHEMA), capture_output=True, text=True,
                         check=True)
    return out.stdout


def reference(grammar_text):
    from llama_cpp import Llama, LlamaGrammar
    llm = Llama(model_path=str(MODEL), n_ctx=2048, n_threads=THREADS, n_threads_batch=THREADS, n_batch=512,
                verbose=False)
    tokens = llm.tokenize(PROMPT.encode(), add_bos=False, special=True)

    def run(constrained):
        grammar = LlamaGrammar.from_string(grammar_text, verbose=False) if constrained else None
        llm.reset()
        times, text = [], []
        for i, tok in enumerate(llm.generate(tokens, top_k=1, temp=0.0, reset=True, grammar=grammar)):
            times.append(time.perf_counter())
            text.append(tok)
            if i + 1 >= GEN:
                break
        return {"decode_tps": (len(times) - 1) / (times[-1] - times[0]), "tokens": len(times),
                "text": llm.detokenize(text).decode(errors="replace")[:60]}
    return run


def bulwark(prompt_file, grammar_file):
    argv = [str(EXAMPLES / "batch_throughput"), str(MODEL), str(THREADS), str(GEN), prompt_file]
    if grammar_file:
        argv.append(grammar_file)
    out = subprocess.run(argv, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    grammar_text = gbnf()
    with tempfile.TemporaryDirectory() as tmp:
        prompt_file = os.path.join(tmp, "prompt.txt")
        pathlib.Path(prompt_file).write_text(PROMPT)
        grammar_file = os.path.join(tmp, "grammar.gbnf")
        pathlib.Path(grammar_file).write_text(grammar_text)
        ref = reference(grammar_text)
        runs = {"ref_free": [], "ref_grammar": [], "bulwark_free": [], "bulwark_grammar": []}
        for _ in range(REPEATS):
            for name in runs:
                time.sleep(0.5)  # let the previous run's OpenMP threads stop spinning
                if name == "ref_free":
                    r = ref(False)
                elif name == "ref_grammar":
                    r = ref(True)
                elif name == "bulwark_free":
                    r = bulwark(prompt_file, None)
                else:
                    r = bulwark(prompt_file, grammar_file)
                assert r["tokens"] >= GEN, (name, r)
                runs[name].append(r["decode_tps"])
        med = {k: statistics.median(v) for k, v in runs.items()}
        print(json.dumps({"bench": "grammar", "threads": THREADS, "gen_tokens": GEN, "repeats": REPEATS,
                          "schema": SCHEMA, "decode_tps_median": {k: round(v, 1) for k, v in med.items()},
                          "constrained_vs_reference": round(med["bulwark_grammar"] / med["ref_grammar"], 3),
                          "grammar_cost_bulwark": round(med["bulwark_grammar"] / med["bulwark_free"], 3),
                          "grammar_cost_reference": round(med["ref_grammar"] / med["ref_free"], 3),
                          "runs": {k: [round(x, 1) for x in v] for k, v in runs.items()}}))


if __name__ == "__main__":
    main()
