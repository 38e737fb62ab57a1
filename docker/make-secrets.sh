#!/bin/sh
# Make the secret files docker-compose.yml mounts (Docker secrets), once per installation:
#
#   docker/make-secrets.sh [DIR]      # default: ./secrets next to docker-compose.yml
#
# Random passwords for PostgreSQL's superuser and the `temporal` and `ledgerflow` users, the
# store's URL built from the latter, and a Standard Webhooks secret (whsec_...). Existing files
# are kept. The directory is readable by its owner only; the files in it are readable by the
# containers' own users (Compose mounts them as they are), so keep the directory where it is.
set -eu

dir="${1:-$(dirname "$0")/../secrets}"
umask 077
mkdir -p "$dir"
chmod 700 "$dir"

random() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

write() {  # write NAME VALUE: only when missing
  if [ ! -e "$dir/$1" ]; then
    printf '%s\n' "$2" > "$dir/$1"
    chmod 444 "$dir/$1"
    echo "made $dir/$1"
  fi
}

write postgres_password "$(random 24)"
write temporal_db_password "$(random 24)"
write ledgerflow_db_password "$(random 24)"
write ledgerflow_database_url \
  "postgresql+psycopg://ledgerflow:$(cat "$dir/ledgerflow_db_password")@postgresql:5432/ledgerflow"
write webhook_secret "whsec_$(head -c 24 /dev/urandom | base64)"
