#!/usr/bin/env bash
# One-host Flower deployment of fedmask on 127.0.0.1: TLS SuperLink with SuperNode
# authentication, N registered SuperNodes (partition-id=I num-partitions=N).
#
#   deploy/local.sh up   [--nodes N] [--timeout S] [--state-dir DIR]   # prints the connection name
#   deploy/local.sh run  [--app DIR] [--state-dir DIR] [flwr run args, e.g. --run-config "k=v ..."]
#   deploy/local.sh restart superlink|node-I [--state-dir DIR]         # start it again after a crash
#   deploy/local.sh status [--state-dir DIR]
#   deploy/local.sh down [--state-dir DIR]                              # stops all it started, by PID
#   deploy/local.sh lab up|run|cut|restore|restart|status|down ...     # each on its own host (deploy/lab.py)
#
# STATE_DIR (certs, logs, FLWR_HOMEs, PIDs): $FEDMASK_DEPLOY_DIR, else ${TMPDIR:-/tmp}/fedmask-deploy.
# Implementation: deploy/local.py, deploy/lab.py (run with the project's .venv, or $FEDMASK_PYTHON).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
script=local.py
if [[ ${1:-} == lab ]]; then
    script=lab.py
    shift
fi
exec "${FEDMASK_PYTHON:-$here/../.venv/bin/python}" "$here/$script" "$@"
