#!/usr/bin/env python3
"""Generates a reproducible text corpus for benchmarks and tests.

Words follow a Zipf-like distribution over a vocabulary of real English words
extended with generated ones (so the distinct-word table is realistic: a few
very common words, a long tail), with capitalisation, punctuation, digits and
some accented and non-Latin words. One event per line.

Usage: gen_corpus.py --bytes N [--seed S] --output FILE
"""
import argparse
import random

BASE = """the of and to a in is it you that he was for on are with as i his they be at one
have this from or had by hot word but what some we can out other were all there when up use
your how said an each she which do their time if will way about many then them write would
like so these her long make thing see him two has look more day could go come did number
sound no most people my over know water than call first who may down side been now find
any new work part take get place made live where after back little only round man year came
show every good me give our under name very through just form sentence great think say help
low line differ turn cause much mean before move right boy old too same tell does set three
want air well also play small end put home read hand port large spell add even land here must
big high such follow act why ask men change went light kind off need house picture try us
again animal point mother world near build self earth father head stand own page should
country found answer school grow study still learn plant cover food sun four between state
keep eye never last let thought city tree cross farm hard start might story saw far sea draw
left late run don't while press close night real life few north""".split()
EXTRA = ["café", "naïve", "Ärger", "straße", "мир", "дом", "σοφία", "東京", "データ", "2024", "r2d2", "well-known"]
PUNCT = [",", ".", ";", ":", "!", "?", " -", ""]


def vocabulary(rng, size):
    words = list(BASE) + EXTRA
    letters = "abcdefghijklmnopqrstuvwxyz"
    while len(words) < size:
        n = rng.randint(3, 11)
        words.append("".join(rng.choice(letters) for _ in range(n)))
    return words


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bytes", type=int, required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--vocabulary", type=int, default=200_000)
    ap.add_argument("--output", required=True)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    vocab = vocabulary(rng, args.vocabulary)
    weights = [1.0 / (r + 1) ** 1.05 for r in range(len(vocab))]
    written = 0
    with open(args.output, "w", encoding="utf-8") as out:
        while written < args.bytes:
            picks = rng.choices(vocab, weights=weights, k=4096)
            lines = []
            i = 0
            while i < len(picks):
                n = rng.randint(4, 18)
                words = picks[i:i + n]
                i += n
                words = [w.capitalize() if rng.random() < 0.08 else w for w in words]
                line = " ".join(w + (rng.choice(PUNCT) if rng.random() < 0.15 else "") for w in words)
                lines.append(line)
            chunk = "\n".join(lines) + "\n"
            out.write(chunk)
            written += len(chunk.encode("utf-8"))


if __name__ == "__main__":
    main()
