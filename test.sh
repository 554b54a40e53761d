#!/usr/bin/env bash
# Set up (if needed), then run the whole test suite (unit tests and real Flower runs).
# Tests read FashionMNIST from $FEDMASK_TEST_DATA (default ../shared/data).
#
# With no arguments, two pytest processes side by side: the real runs that mostly wait
# (marker `waiting`: deadlines, heartbeats, reconnects) and everything else, each with
# its own temporary root; the waiting one's output follows the other's, and the exit
# status is the first failure's. With arguments, one pytest process with them.
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
pytest=(.venv/bin/python -m pytest -q --durations=15)
if [ "$#" -gt 0 ]; then
    exec "${pytest[@]}" "$@"
fi
temp="$(mktemp -d)"
trap 'rm -rf "$temp"' EXIT
"${pytest[@]}" -m "waiting" --basetemp "$temp/waiting" > "$temp/waiting.log" 2>&1 &
waiting=$!
rest=0
"${pytest[@]}" -m "not waiting" --basetemp "$temp/rest" || rest=$?
status=0
wait "$waiting" || status=$?
echo "---- the waiting tests (-m waiting), run beside the above ----"
cat "$temp/waiting.log"
[ "$rest" -ne 0 ] && exit "$rest"
exit "$status"
