#!/usr/bin/env bash
# SQLite clones in memory (issue 19, item 6): a warm run of the example
# project (examples/shop, 726 pytest-django tests; 638 through manage.py test),
# 2 workers, on the embedded SQLite default, with each worker's clone loaded
# into a private in-memory database at start (the default where the test
# settings would test in memory, as Django's own test database does) against
# clones used as files on disk (DBFORK_SQLITE_IN_MEMORY=0). hyperfine runs the
# pairs side by side; its user/system figures are the means over the whole
# process tree (dbfork, the controller, the workers).
#
#   cargo build --release --bin dbfork
#   bash bench/sqlite_memory.sh            # RUNS=10 by default
#
# Results: hyperfine's Markdown on stdout, its JSON in bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
dbfork="${DBFORK:-$root/target/release/dbfork}"
runs="${RUNS:-10}"
python="$root/.venv/bin/python"
stamp=$(date +%Y%m%d-%H%M%S)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
command -v hyperfine >/dev/null || { echo "needs hyperfine (apt-get install hyperfine)" >&2; exit 1; }
cd examples/shop
db="sqlite://$work/main.sqlite3"
pytest="$dbfork run -j 2 --db '$db' -- $python -m pytest -q -p no:cacheprovider"
manage="$dbfork run -j 2 --db '$db' -- $python manage.py test"
hyperfine --warmup 1 --runs "$runs" --style basic \
  --export-json "$root/bench/results/sqlite-memory-$stamp.json" \
  --export-markdown "$work/table.md" \
  -n "pytest, clones in memory" "DBFORK_SQLITE_IN_MEMORY=1 $pytest" \
  -n "pytest, clones on disk" "DBFORK_SQLITE_IN_MEMORY=0 $pytest" \
  -n "manage.py test, clones in memory" "DBFORK_SQLITE_IN_MEMORY=1 $manage" \
  -n "manage.py test, clones on disk" "DBFORK_SQLITE_IN_MEMORY=0 $manage" >&2
cat "$work/table.md"
"$python" - "$root/bench/results/sqlite-memory-$stamp.json" <<'PY'
import json, statistics, sys
results = json.load(open(sys.argv[1]))["results"]
print("\n| variant | wall median (s) | user CPU mean (s) | system CPU mean (s) |")
print("|---|---|---|---|")
for r in results:
    print("| %s | %.2f | %.2f | %.2f |" % (r["command"], statistics.median(r["times"]), r["user"], r["system"]))
PY
echo "raw: bench/results/sqlite-memory-$stamp.json"
