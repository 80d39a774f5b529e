#!/usr/bin/env bash
# `lambda mapreduce` side by side with DuckDB on the same ~50 MB text, both on
# 2 threads, warm page cache; prints each engine's best of N runs, MB/s, the
# speed ratio and peak memory (max RSS).
#
# Usage: bash bench/mapreduce_vs_duckdb.sh [MEGABYTES] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
MB=${1:-50}
RUNS=${2:-3}
THREADS=2
WORK=${BENCH_DIR:-target/bench}
mkdir -p "$WORK"
CORPUS="$WORK/corpus-${MB}MB.txt"

python3 -c 'import duckdb' 2>/dev/null || pip install -q duckdb
[ -f "$CORPUS" ] || python3 bench/gen_corpus.py --bytes $((MB * 1000 * 1000)) --seed 42 --output "$CORPUS"
cargo build --release -q -p cli
BIN=${LAMBDA_BIN:-target/release/lambda}
BYTES=$(stat -c %s "$CORPUS")
cat "$CORPUS" > /dev/null  # warm the page cache

cat > "$WORK/duckdb_wc.py" <<'PY'
import sys, duckdb
path, threads, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
con = duckdb.connect()
con.execute(f"SET threads={threads}")
delim = chr(1)  # never in the text: one column, one line per row
con.execute(f"""
COPY (
  SELECT word, count(*) AS n
  FROM (SELECT unnest(regexp_extract_all(lower(line), '[\\pL\\pN]+')) AS word
        FROM read_csv('{path}', columns={{'line': 'VARCHAR'}}, header=false,
                      delim='{delim}', quote='', escape='', auto_detect=false))
  GROUP BY word ORDER BY n DESC, word
) TO '{out}' (HEADER false, DELIMITER '\t')
""")
PY

# best_of CMD...: prints "seconds max_rss_kb" of the fastest run.
best_of() {
  local best="" rss=""
  for _ in $(seq "$RUNS"); do
    /usr/bin/time -f '%e %M' -o "$WORK/time.txt" "$@" > /dev/null 2> "$WORK/stderr.txt" \
      || { cat "$WORK/stderr.txt" >&2; exit 1; }
    read -r s m < "$WORK/time.txt"
    if [ -z "$best" ] || awk "BEGIN{exit !($s < $best)}"; then best=$s; rss=$m; fi
  done
  echo "$best $rss"
}

read -r L_S L_RSS < <(best_of "$BIN" mapreduce --threads $THREADS --input "$CORPUS" --output "$WORK/lambda.tsv")
read -r D_S D_RSS < <(best_of python3 "$WORK/duckdb_wc.py" "$CORPUS" $THREADS "$WORK/duckdb.tsv")
"$BIN" mapreduce --threads $THREADS --input "$CORPUS" --output "$WORK/lambda.tsv"
DISTINCT=$(wc -l < "$WORK/lambda.tsv")

awk -v b="$BYTES" -v ls="$L_S" -v ds="$D_S" -v lr="$L_RSS" -v dr="$D_RSS" -v n="$DISTINCT" -v t="$THREADS" 'BEGIN {
  mb = b / 1e6
  printf "\ninput: %.1f MB, %d distinct words, %d threads, best of runs, warm cache\n", mb, n, t
  printf "%-18s %9s %10s %12s\n", "engine", "seconds", "MB/s", "max RSS MB"
  printf "%-18s %9.2f %10.1f %12.1f\n", "lambda mapreduce", ls, mb / ls, lr / 1024
  printf "%-18s %9.2f %10.1f %12.1f\n", "duckdb", ds, mb / ds, dr / 1024
  printf "speed ratio (duckdb seconds / lambda seconds): %.1fx\n", ds / ls
}'
if cmp -s "$WORK/lambda.tsv" "$WORK/duckdb.tsv"; then
  echo "outputs: byte-identical"
else
  echo "outputs: DIFFER (diff $WORK/lambda.tsv $WORK/duckdb.tsv)"
fi
