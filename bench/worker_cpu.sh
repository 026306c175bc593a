#!/usr/bin/env bash
# Workers' CPU (issue 11): user and system CPU time of a whole warm run of the
# example project (examples/shop, 726 pytest-django tests, 2 workers), for two
# dbfork binaries side by side (BEFORE: an older build, AFTER: this tree's) and
# pytest-xdist, with hyperfine (its user/system figures are the means of the
# whole command's process tree: dbfork or pytest, the controller and the
# workers). Every variant runs once unmeasured first (templates built, test
# databases kept), then RUNS times each (hyperfine runs one command's runs, then the next).
#
#   cargo build --release --bin dbfork
#   BEFORE=/path/to/old/dbfork bash bench/worker_cpu.sh            # sqlite and postgres
#   BACKENDS=postgres RUNS=3 BEFORE=... bash bench/worker_cpu.sh
#
# SQLite: dbfork on its default (clones are files); pytest-xdist tests on
# in-memory databases and migrates in every worker on every run, so its CPU
# includes two migrations (the reference, not a like-for-like pair).
# PostgreSQL: a throwaway server (`dbfork db ephemeral postgres`); dbfork warm
# against `pytest -n 2 --reuse-db` (test databases kept): both only run tests.
# Results: Markdown on stdout, hyperfine's JSON in bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
after="${AFTER:-$root/target/release/dbfork}"
before="${BEFORE:?set BEFORE to the dbfork binary to compare with}"
runs="${RUNS:-5}"
backends="${BACKENDS:-sqlite postgres}"
python="$root/.venv/bin/python"
pytest="$python -m pytest -q -p no:cacheprovider"
stamp=$(date +%Y%m%d-%H%M%S)
work=$(mktemp -d)
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill -TERM "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
command -v hyperfine >/dev/null || { echo "needs hyperfine (apt-get install hyperfine)" >&2; exit 1; }
cd examples/shop

for backend in $backends; do
  case $backend in
    sqlite)
      db_before="sqlite://$work/before/main.sqlite3"
      db_after="sqlite://$work/after/main.sqlite3"
      xdist="DATABASE_URL=sqlite:///$work/xdist.sqlite3 $pytest -n 2"
      ;;
    postgres)
      "$after" db ephemeral postgres >"$work/pg.url" 2>"$work/pg.log" &
      server_pid=$!
      for _ in $(seq 1 300); do [ -s "$work/pg.url" ] && break; sleep 0.1; done
      url=$(head -1 "$work/pg.url")
      db_before="$url"
      db_after="$url"
      xdist="DATABASE_URL='${url/\/postgres\?//benchcpu?}' $pytest -n 2 --reuse-db || true"
      ;;
  esac
  echo "== $backend"
  hyperfine --warmup 1 --runs "$runs" --style basic \
    --export-json "$root/bench/results/worker-cpu-$backend-$stamp.json" \
    -n "dbfork before" "$before run -j 2 --db '$db_before' -- $pytest" \
    -n "dbfork after" "$after run -j 2 --db '$db_after' -- $pytest" \
    -n "pytest-xdist" "$xdist"
  "$python" - "$root/bench/results/worker-cpu-$backend-$stamp.json" <<'PY'
import json, statistics, sys
data = json.load(open(sys.argv[1]))["results"]
print("| variant | wall median (s) | user CPU mean (s) | system CPU mean (s) |")
print("|---|---|---|---|")
for r in data:
    print(f"| {r['command']} | {statistics.median(r['times']):.2f} | {r['user']:.2f} | {r['system']:.2f} |")
PY
  if [ -n "$server_pid" ]; then
    kill -TERM "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""
  fi
done
