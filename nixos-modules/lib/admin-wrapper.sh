# loom-server-admin: `loom-server admin …` as the unit runs it. Sourced by the wrapper the module
# writes (loom-server.nix), which sets first:
#   unit_user, unit_group   the unit's User=/Group= (root for the local backend)
#   unit_dir                its WorkingDirectory=
#   unit_path               its PATH
#   unit_env                array of KEY=value: its Environment=
#   env_file                its EnvironmentFile= ("" if none)
#   loom_server             the loom-server binary
# The command gets exactly the unit's environment: the caller's is dropped (env -i), the
# environment file is read like systemd reads EnvironmentFile= (it overrides Environment=), and
# it runs as the unit's user with that user's groups (which include the kubeconfig group).
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
  echo "loom-server-admin: run as root (sudo loom-server-admin …): it switches to the unit's user and reads its environment file" >&2
  exit 1
fi

file_env=()
if [ -n "$env_file" ]; then
  if [ ! -r "$env_file" ]; then
    echo "loom-server-admin: cannot read the environment file $env_file" >&2
    exit 1
  fi
  n=0
  while IFS= read -r line || [ -n "$line" ]; do
    n=$((n + 1))
    # systemd: blank lines and lines starting with # or ; are skipped; KEY=VALUE, whitespace
    # around KEY and before VALUE ignored, one pair of enclosing quotes removed.
    line="${line#"${line%%[![:space:]]*}"}"
    case "$line" in '' | '#'* | ';'*) continue ;; esac
    if [[ ! "$line" =~ ^([A-Za-z_][A-Za-z0-9_]*)[[:space:]]*=[[:space:]]*(.*)$ ]]; then
      echo "loom-server-admin: $env_file:$n: not KEY=VALUE" >&2
      exit 1
    fi
    key="${BASH_REMATCH[1]}"
    value="${BASH_REMATCH[2]}"
    if [[ "$value" =~ ^\"(.*)\"$ || "$value" =~ ^\'(.*)\'$ ]]; then value="${BASH_REMATCH[1]}"; fi
    file_env+=("$key=$value")
  done <"$env_file"
fi

cd "$unit_dir"
exec setpriv --reuid="$unit_user" --regid="$unit_group" --init-groups \
  env -i "PATH=$unit_path" "HOME=$unit_dir" "${unit_env[@]}" "${file_env[@]}" \
  "$loom_server" admin "$@"
