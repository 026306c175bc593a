#!/bin/sh
# target/release/dbfork with its runs not recorded (DBFORK_KEEP_RUNS=0): for
# `bench/runner.py --only overhead --before bench/no-recording.sh`, which sets
# the recording's cost side by side with the same build recording its runs.
DBFORK_KEEP_RUNS=0 exec "$(dirname "$0")/../target/release/dbfork" "$@"
