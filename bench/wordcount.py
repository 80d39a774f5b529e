#!/usr/bin/env python3
"""Independent word count with Lambda's tokenizer rule, for checking `lambda mapreduce`.

A word is a maximal run of alphanumeric characters, lowercased character by
character (Rust's char::to_lowercase; Python's str.lower on a whole word would
turn a final capital sigma into 'ς'). Lines that are not UTF-8 are skipped.
Output: word<TAB>count, count descending then word ascending.

Usage: wordcount.py FILE > counts.tsv
"""
import sys
from collections import Counter


def words(text):
    word = []
    for ch in text:
        if ch.isalpha() or ch.isnumeric():
            word.append(ch.lower())
        elif word:
            yield "".join(word)
            word = []
    if word:
        yield "".join(word)


def main(path):
    counts = Counter()
    with open(path, "rb") as f:
        for raw in f:
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                continue
            counts.update(words(line))
    out = sys.stdout
    for word, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        out.write(f"{word}\t{count}\n")


if __name__ == "__main__":
    main(sys.argv[1])
