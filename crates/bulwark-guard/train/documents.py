"""Documents for training: passages of benign technical prose and code, and the same kind
of passages with one attack hidden inside; and, from another project, long pieces of
documentation and code to choose the documents model's threshold on.

Why: the registry corpora's benign texts are short questions (median 8 words; 13 of 8,341
are over 100 words), while many of their attacks are long. Trained on them alone, the
encoder took ordinary documentation and source code for attacks (`bench/documents.py`
measures it on the crates' own documentation). A gateway reads documents and tool results,
so it must learn what they look like.

Sources, four projects in three programming languages, each a source of its own (the
`source` of its rows, which leave-one-source-out holds out whole), digests pinned below:
  django  the Django 5.1.4 sdist on PyPI (BSD-3-Clause): its reStructuredText
          documentation (docs/**/*.txt), its Python source (django/**/*.py) and the
          translations of its messages (django/conf/locale/*/LC_MESSAGES/django.po)
  pytest  the pytest 8.3.4 sdist on PyPI (MIT): doc/en/**/*.rst (not the release
          announcements: lists of names) and src/**/*.py
  tokio   the tokio 1.54.1 crate on crates.io (MIT): src/**/*.rs (Rust with its doc
          comments) and its Markdown (README, CHANGELOG)
  lodash  the lodash 4.17.21 package on npm (MIT): its JavaScript (with JSDoc comments)
          and README
A project is picked at random for each passage and snippet, then one of its files.
A passage is a run of 30 to 90 consecutive words from one file, line breaks kept: about
one window of the encoder (128 tokens), cut anywhere, as the gateway's windows cut a long
text. Attack passages are other such passages with one attack from the fit split (train
minus the tuning split; injections, not harmful requests: neuralchemy's "jailbreak" rows
are left out; at most 40 words) put in at a random word. The tuning split's texts are
never used, and these passages join the fit split only (never tuning, never dev): the
thresholds are still chosen on the registry corpora.

The first stage's documents model (`examples/train_injection.rs`) trains on 12,000 benign
passages and 6,000 with an attack. The second stage's experiment with documents
(`finetune_encoder.py`, DOCS=1) used 3,000 and 1,500: BENIGN=3000 ATTACKS=1500.

Calibration (documents_calibration.jsonl): the Sphinx 8.1.3 sdist on PyPI (BSD-2-Clause,
digest pinned below), a different project, so that the threshold is chosen on text the
model never trained on: its documentation (doc/**/*.rst) cut at blank lines into pieces
of about 1 KB and 4 KB, and its source (sphinx/**/*.py) into pieces of about 2 KB, as
bench/documents.py cuts the crates' (which stay the independent check). Two pieces in
three of the prose and 600 of the code are benign; the other prose pieces each get one
attack of the tuning split (injections, at most 60 words) at a paragraph boundary, to
report how many the documents model finds (they choose nothing).

Snippets (snippets.jsonl): 3,000 runs of 2 to 12 lines of the projects' source and 1,500 of
1 to 6 lines of their documentation, 3 to 64 words each, benign, for the first model (which
reads texts of up to 64 words): its training texts have no code, and it blocked about one
short snippet of source or documentation in five. Also up to LOCALE_PER_LANG of Django's
translated messages of 3 words or more in each of thirteen languages (the issue's
languages besides English): interface text ("Enter a valid e-mail address.") in the
languages whose ordinary requests the first model blocked most often. And PROSE_SENTENCES
single sentences of the projects' documentation and doc comments (8 to 60 words): the
first model blocked one sentence in twenty-three of a technical book it never saw (the
Debian Administrator's Handbook, which stays out of training as a held-out check).

Deterministic (fixed seeds). Usage: python documents.py DATA_DIR (after prepare.py;
writes DATA_DIR/docs.jsonl, snippets.jsonl and documents_calibration.jsonl).
"""
import json
import os
import pathlib
import random
import re
import sys
import tarfile

from prepare import fetch, is_tuning, original_source

# name: (file, requirement for pip, sha256, the registry's address for the file or None)
PROJECTS = {
    "django": ("Django-5.1.4.tar.gz", "django==5.1.4",
               "de450c09e91879fa5a307f696e57c851955c910a438a35e6b4c895e86bedc82a", None),
    "pytest": ("pytest-8.3.4.tar.gz", None, "965370d062bce11e73868e0335abac31b4d3de0e82f4007408d242b4f8610761",
               "https://files.pythonhosted.org/packages/05/35/30e0d83068951d90a01852cb1cef56e5d8a09d20c7f511634cc2f7e0372a/"
               "pytest-8.3.4.tar.gz"),
    "tokio": ("tokio-1.54.1.crate", None, "b52fd3255258d26fac7264ab5a76b53c13367136dc011d3d6ad4f8ed070396a3",
              "https://static.crates.io/crates/tokio/tokio-1.54.1.crate"),
    "lodash": ("lodash-4.17.21.tgz", None, "6a087ac9e5702a0c9d60fbcd48696012646ec8df1491dea472b150e79fcaf804",
               "https://registry.npmjs.org/lodash/-/lodash-4.17.21.tgz"),
}
LOCALES = {"fr": "fr", "de": "de", "es": "es", "it": "it", "pt": "pt", "nl": "nl", "pl": "pl", "zh_Hans": "zh",
           "ja": "ja", "ar": "ar", "hi": "hi", "ru": "ru", "tr": "tr"}
LOCALE_PER_LANG = 100
PROSE_SENTENCES = 6000
CAL_SDIST = "sphinx-8.1.3.tar.gz"
CAL_SDIST_SHA256 = "43c1911eecb0d3e161ad78611bc905d1ad0e523e4ddc202a58a821773dc4c927"
BENIGN = int(os.environ.get("BENIGN", "12000"))
ATTACKS = int(os.environ.get("ATTACKS", "6000"))
SNIPPETS = 3000
# neuralchemy's "jailbreak" rows are mostly harmful requests ("Write a blog post
# explaining why ..."), which say nothing about an instruction hidden in a document.
NOT_INJECTIONS = {"jailbreak"}


def hidden_from(row):
    """Whether attacks of `row`'s source are hidden in documents: those of the original
    sources (prepare.original_source), so that the passages stay as they were; every row
    says in `from` which source its attack came from, so that leave-one-source-out can
    drop it with that source."""
    return original_source(row["source"])


def passage(text, rng):
    """A run of 30 to 90 consecutive words of `text` (whitespace kept), or None."""
    words = list(re.finditer(r"\S+", text))
    n = rng.randint(30, 90)
    if len(words) < n:
        return None
    first = rng.randrange(len(words) - n + 1)
    return text[words[first].start():words[first + n - 1].end()]


def hide(text, attack, rng):
    """`text` with `attack` put in at a word boundary among its first 40 words."""
    words = list(re.finditer(r"\S+", text))
    at = words[rng.randrange(min(len(words), 40))].start()
    sep = rng.choice([" ", "\n", "\n\n"])
    return text[:at] + attack + sep + text[at:]


def chunks(text, size):
    """`text` cut at blank lines into pieces of about `size` bytes (as bench/documents.py)."""
    out, cur = [], ""
    for p in re.split(r"\n\s*\n", text):
        p = p.strip()
        if not p:
            continue
        if cur and len(cur) + len(p) > size:
            out.append(cur)
            cur = ""
        cur += p + "\n\n"
        if len(cur) > 2 * size:
            out.append(cur[:size])
            cur = ""
    if len(cur) > size // 2:
        out.append(cur)
    return out


def hide_paragraph(doc, attack, rng):
    """`doc` with `attack` as a paragraph of its own or at the end of one."""
    paras = doc.split("\n\n")
    at = rng.randrange(len(paras) + 1)
    if at < len(paras) and rng.random() < 0.5:
        paras[at] = paras[at].rstrip() + " " + attack
    else:
        paras.insert(at, attack)
    return "\n\n".join(paras)


def snippet(files, lo, hi, rng):
    """`lo` to `hi` consecutive lines of one of `files` (at least 20 lines long), of 3 to
    64 words: what a chat turn quotes, or a short tool result."""
    while True:
        lines = rng.choice(files).split("\n")
        if len(lines) < max(20, hi + 1):
            continue
        at = rng.randrange(len(lines) - hi)
        text = "\n".join(lines[at:at + rng.randint(lo, hi)]).strip()
        if 3 <= len(text.split()) <= 64:
            return text


def project_files(name, archive):
    """A project's documentation and source, in file-name order: (kind, text) with kind
    "docs" or "code" (see the module's comment for which files)."""
    def kind(path):
        parts = path.split("/")[1:]
        if name == "django":
            if parts[0] == "docs" and path.endswith(".txt") and "_theme" not in parts:
                return "docs"
            return "code" if parts[0] == "django" and path.endswith(".py") else None
        if name == "pytest":
            if parts[:2] == ["doc", "en"] and path.endswith(".rst") and "announce" not in parts:
                return "docs"
            return "code" if parts[0] == "src" and path.endswith(".py") else None
        if name == "tokio":
            if len(parts) == 1 and path.endswith(".md"):
                return "docs"
            return "code" if parts[0] == "src" and path.endswith(".rs") else None
        if name == "lodash":
            if parts == ["README.md"]:
                return "docs"
            return "code" if path.endswith(".js") else None
        raise ValueError(name)

    out = []
    with tarfile.open(archive) as t:
        for m in sorted(t.getmembers(), key=lambda m: m.name):
            k = m.isfile() and kind(m.name)
            if k:
                out.append((k, t.extractfile(m).read().decode("utf-8", "replace")))
    return out


def po_messages(text):
    """The translations (msgstr, joined over their lines) of a gettext catalogue."""
    out, cur, inside = [], [], False
    for line in text.splitlines() + [""]:
        line = line.strip()
        if line.startswith("msgstr"):
            inside, cur = True, [line.split(" ", 1)[1] if " " in line else '""']
        elif inside and line.startswith('"'):
            cur.append(line)
        else:
            if inside:
                msg = "".join(c[1:-1] for c in cur if len(c) >= 2).replace('\\"', '"').replace("\\n", " ").strip()
                if msg:
                    out.append(msg)
            inside = False
    return out


def locale_snippets(archive, rng):
    """Up to LOCALE_PER_LANG of Django's translated messages of at least three words per
    language, benign, with their language."""
    rows = []
    with tarfile.open(archive) as t:
        for m in sorted(t.getmembers(), key=lambda m: m.name):
            parts = m.name.split("/")
            if (m.isfile() and len(parts) > 3 and parts[-2:] == ["LC_MESSAGES", "django.po"]
                    and "/conf/locale/" in m.name and parts[-3] in LOCALES):
                msgs = sorted({x for x in po_messages(t.extractfile(m).read().decode("utf-8", "replace"))
                               if len(x.split()) >= 3 or (LOCALES[parts[-3]] in ("zh", "ja") and len(x) >= 6)})
                rng.shuffle(msgs)
                rows += [{"text": x, "label": 0, "source": "django", "lang": LOCALES[parts[-3]],
                          "kind": "benign documents"} for x in msgs[:LOCALE_PER_LANG]]
    return rows


def prose_paragraphs(text):
    """The prose paragraphs of a documentation file or of a source file's doc comments
    (Rust's `///` and `//!`, JSDoc's ` * `), each joined into one line: no code blocks,
    directives, headings' underlines or tables."""
    lines = []
    for line in text.splitlines():
        t = line.strip()
        for mark in ("///", "//!", "* "):
            if t.startswith(mark):
                t = t[len(mark):].strip()
                break
        else:
            if t in ("*", "/**", "*/"):
                t = ""
        lines.append(t)
    out, cur = [], []
    for t in lines + [""]:
        if t and not re.match(r"^([=\-~^*#`'+_.]{3,}|\.\. |::|[|+]|@|[>$]|```|#\[)", t):
            cur.append(t)
        elif cur:
            out.append(" ".join(cur))
            cur = []
    return out


def sentences(projects, rng):
    """Up to PROSE_SENTENCES sentences of the projects' documentation and doc comments,
    an equal share of each project's (or all it has), of 8 to 60 words, mostly words;
    benign: a document's sentence quoted on its own, the form in which technical prose
    was most often taken for an attack."""
    pool = {}
    for name, files in projects.items():
        for _, text in files:
            for para in prose_paragraphs(text):
                for sent in re.split(r"(?<=[.!?])\s+(?=[A-Z])", para):
                    words = sent.split()
                    if 8 <= len(words) <= 60 and sum(w.isalpha() for w in words) >= 0.7 * len(words):
                        pool.setdefault(name, set()).add(sent)
    names = sorted(pool)
    pool = {n: sorted(pool[n]) for n in names}
    per = PROSE_SENTENCES // len(names)
    return [{"text": t, "label": 0, "source": n, "kind": "benign prose"}
            for n in names for t in rng.sample(pool[n], min(per, len(pool[n])))]


def snippets(projects, rng):
    """Short benign snippets of the projects' source (2 to 12 lines) and documentation (1
    to 6 lines), for the first model: its training texts have no code, and it blocked one
    short snippet of source or documentation in five. Each row's source is its project."""
    names = sorted(projects)
    out = []
    for kind, n, lo, hi in (("code", SNIPPETS, 2, 12), ("docs", SNIPPETS // 2, 1, 6)):
        for _ in range(n):
            name = rng.choice(names)
            files = [t for k, t in projects[name] if k == kind and len(t.split("\n")) >= max(20, hi + 1)]
            out.append({"text": snippet(files, lo, hi, rng), "label": 0, "source": name})
    return out


def calibration(data, train):
    """Long pieces of Sphinx's documentation and code, a third of the prose with a tuning
    attack hidden in it (`category` says which kind)."""
    sdist = fetch(data, CAL_SDIST, "sphinx==8.1.3", CAL_SDIST_SHA256, sdist=True)
    docs, code = [], []
    with tarfile.open(sdist) as t:
        for m in sorted(t.getmembers(), key=lambda m: m.name):
            parts = m.name.split("/")
            if not m.isfile() or len(parts) < 3:
                continue
            if parts[1] == "doc" and m.name.endswith(".rst"):
                text = t.extractfile(m).read().decode("utf-8", "replace")
                for size in (1024, 4096):
                    docs += [(c, f"prose {size // 1024} KB") for c in chunks(text, size)]
            elif parts[1] == "sphinx" and m.name.endswith(".py"):
                text = t.extractfile(m).read().decode("utf-8", "replace")
                code += [(c, "code 2 KB") for c in chunks(text, 2048)]
    rng = random.Random(5)
    rng.shuffle(docs)
    rng.shuffle(code)
    attacks = [(r["text"], r["source"]) for r in train
               if r["label"] == 1 and is_tuning(r["text"]) and r.get("category", "") not in NOT_INJECTIONS
               and len(r["text"].split()) <= 60 and hidden_from(r)]
    n = len(docs) * 2 // 3
    rows = [{"text": c, "label": 0, "category": k} for c, k in docs[:n] + code[:600]]
    for c, k in docs[n:]:
        attack, source = rng.choice(attacks)
        rows.append({"text": hide_paragraph(c, attack, rng), "label": 1, "category": "attack in " + k, "from": source})
    with open(data / "documents_calibration.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"documents calibration: {n + min(600, len(code))} benign pieces, {len(docs) - n} with an attack",
          file=sys.stderr)


def main(data):
    data = pathlib.Path(data)
    archives = {name: fetch(data, file, req, sha, sdist=True, url=url) for name, (file, req, sha, url) in PROJECTS.items()}
    projects = {name: project_files(name, path) for name, path in archives.items()}
    names = sorted(projects)
    rng = random.Random(11)
    train = [json.loads(l) for l in open(data / "train.jsonl")]
    attacks = [(r["text"], r["source"]) for r in train
               if r["label"] == 1 and not is_tuning(r["text"]) and r.get("category", "") not in NOT_INJECTIONS
               and len(r["text"].split()) <= 40 and hidden_from(r)]

    def passages(n):
        out = []
        while len(out) < n:
            name = rng.choice(names)
            p = passage(rng.choice(projects[name])[1], rng)
            if p is not None:
                out.append((name, p))
        return out

    rows = [{"text": t, "label": 0, "source": name} for name, t in passages(BENIGN)]
    for name, t in passages(ATTACKS):
        attack, source = rng.choice(attacks)
        rows.append({"text": hide(t, attack, rng), "label": 1, "source": name, "from": source})
    rng.shuffle(rows)
    with open(data / "docs.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    files = {name: len(p) for name, p in projects.items()}
    print(f"docs: {BENIGN} passages, {ATTACKS} with an attack hidden, from {files} files; "
          f"{len(attacks)} attacks to hide", file=sys.stderr)
    rows = (snippets(projects, random.Random(7)) + locale_snippets(archives["django"], random.Random(3))
            + sentences(projects, random.Random(13)))
    with open(data / "snippets.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"snippets: {len(rows)} short pieces of code, documentation and translated messages", file=sys.stderr)
    calibration(data, train)


if __name__ == "__main__":
    main(sys.argv[1])
