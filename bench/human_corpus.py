"""Human-written sentences for the watermark's false-positive tests.

Source: "The Debian Administrator's Handbook" by Raphaël Hertzog and Roland Mas,
English edition, Debian package `debian-handbook` 11.20220922, licence GPL-2.0+ or
CC-BY-SA-3.0 (we use it under CC-BY-SA-3.0, with this attribution). Written by people
between 2003 and 2022, before text generators were common.

    apt-get download debian-handbook=11.20220922
    dpkg-deb -x debian-handbook_11.20220922_all.deb /tmp/dh
    python3 bench/human_corpus.py /tmp/dh > crates/bulwark-engine/tests/data/human_sentences.txt

Keeps the paragraphs' sentences of 8 to 60 words, once each, in the book's order.
"""

import html.parser
import pathlib
import re
import sys

LIMIT = 4000


class Paras(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.depth = 0
        self.skip = 0
        self.buf = []
        self.out = []

    def handle_starttag(self, tag, attrs):
        cls = dict(attrs).get("class") or ""
        if self.depth:
            self.depth += 1
            if tag in ("code", "pre", "span") and self.skip == 0 and (
                tag != "span" or "command" in cls or "filename" in cls
            ):
                self.skip = self.depth
        elif tag == "div" and cls == "para":
            self.depth = 1
            self.buf = []

    def handle_endtag(self, tag):
        if self.depth:
            if self.skip == self.depth:
                self.skip = 0
            self.depth -= 1
            if self.depth == 0:
                self.out.append("".join(self.buf))

    def handle_data(self, data):
        if self.depth and not self.skip:
            self.buf.append(data)


def main():
    root = pathlib.Path(sys.argv[1]) / "usr/share/doc/debian-handbook/html/en-US"
    seen, kept = set(), []
    for page in sorted(root.glob("*.html")):
        p = Paras()
        p.feed(page.read_text(encoding="utf-8"))
        for para in p.out:
            para = re.sub(r"\s+", " ", para).strip()
            for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", para):
                words = s.split()
                if 8 <= len(words) <= 60 and s not in seen and s[-1] in ".!?":
                    seen.add(s)
                    kept.append(s)
    print("# Sentences from \"The Debian Administrator's Handbook\" (Raphael Hertzog, Roland Mas),")
    print("# debian-handbook 11.20220922, CC-BY-SA-3.0. Extracted by bench/human_corpus.py.")
    for s in kept[:LIMIT]:
        print(s)


main()
