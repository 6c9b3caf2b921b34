#!/bin/sh
# The image's entrypoint: projmig's CLI, unless the command is one that Prefect or an operator
# starts in the container as it is (a worker, a flow run, a shell).
set -e
case "${1:-}" in
    prefect|python|python3|pip|sh|bash) exec "$@" ;;
    *) exec projmig "$@" ;;
esac
