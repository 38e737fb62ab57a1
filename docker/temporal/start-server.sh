#!/bin/sh
# temporalio/server reads its database password from POSTGRES_PWD; take it from the Docker
# secret instead of the compose file, then run the image's own entrypoint.
set -eu
POSTGRES_PWD="$(cat /run/secrets/temporal_db_password)"
export POSTGRES_PWD
exec /etc/temporal/entrypoint.sh "$@"
