#!/usr/bin/env bash
# Where the time of examples/shop's migrations goes (the template build of a
# cold run): the whole `migrate` on a new SQLite file, plain and under
# cProfile, and the profile's share of Django's migration-state rendering
# (ProjectState.reload_model, render_multiple) against the SQL executed.
#   bash bench/migrate_profile.sh        # needs .venv (bench/setup-venv.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-$PWD/.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd examples/shop
start=$(date +%s.%N)
DATABASE_URL="sqlite:///$work/plain.sqlite3" "$py" manage.py migrate -v0
end=$(date +%s.%N)
echo "migrate, plain: $(echo "$end - $start" | bc) s"
DATABASE_URL="sqlite:///$work/profiled.sqlite3" "$py" -m cProfile -o "$work/migrate.prof" manage.py migrate -v0
"$py" - "$work/migrate.prof" <<'PY'
import pstats, sys
stats = pstats.Stats(sys.argv[1]).stats
total = max(ct for (_, _, _, ct, _) in stats.values())
def cumulative(file_end, name):
    return sum(ct for (f, _, n), (_, _, _, ct, _) in stats.items() if f.endswith(file_end) and n == name)
rows = [
    ("everything (under cProfile)", total),
    ("migration state: ProjectState.reload_model", cumulative("migrations/state.py", "reload_model")),
    ("  of which StateApps.render_multiple", cumulative("migrations/state.py", "render_multiple")),
    ("SQL: CursorWrapper.execute + executemany", cumulative("backends/utils.py", "execute") + cumulative("backends/utils.py", "executemany")),
]
for name, seconds in rows:
    print("%-46s %7.1f s  %5.1f%%" % (name, seconds, 100 * seconds / total))
PY
