#!/usr/bin/env bash
# Runs the sign-in flow (tests/tests/support/keycloak.rs, in the identity tests) once against a
# real Keycloak: downloads its distribution from Maven Central into target/keycloak/ (kept for the next run), starts it in
# dev mode on a free loopback port with a `clinic` realm imported, runs the test and stops it.
# Not part of scripts/test: the download and the boot take too long for every run.
#
# KEYCLOAK_VERSION picks the release (default: the one this was last run with); it runs on
# JAVA_HOME's JDK, else the newest found (17 or later).
# KEYCLOAK_BOOT_TIMEOUT is how long to wait for the realm to answer (seconds, default 300).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache="$root/target/keycloak"
boot_timeout="${KEYCLOAK_BOOT_TIMEOUT:-300}"

# The ada and root accounts, in the realm imported below and in the test.
ada_password="ada-password"
root_password="root-password"

# The major version of the `java` binary $1.
java_major() {
  local version
  version="$("$1" -version 2>&1 | awk -F'"' '/version/ { print $2; exit }')"
  case "$version" in
    1.*) version="${version#1.}" ;;
  esac
  echo "${version%%[.+-]*}"
}

# JAVA_HOME if set, else the newest JDK among `java` on the PATH and the usual install
# directory: Java 17 is often the default while a newer JDK is installed beside it, and
# Keycloak releases raise their minimum over time.
if [ -n "${JAVA_HOME:-}" ]; then
  candidates=("$JAVA_HOME/bin/java")
else
  candidates=("$(command -v java || true)" /usr/lib/jvm/*/bin/java)
fi
best_java=""
best_major=0
for candidate in "${candidates[@]}"; do
  [ -n "$candidate" ] && [ -x "$candidate" ] || continue
  major="$(java_major "$candidate" || echo 0)"
  if [[ "$major" =~ ^[0-9]+$ ]] && [ "$major" -gt "$best_major" ]; then
    best_java="$candidate"
    best_major="$major"
  fi
done
if [ "$best_major" -lt 17 ]; then
  echo "no JDK 17 or later found (set JAVA_HOME)" >&2
  exit 1
fi
JAVA_HOME="$(dirname "$(dirname "$(readlink -f "$best_java")")")"
export JAVA_HOME
version="${KEYCLOAK_VERSION:-26.7.3}"
echo "Keycloak $version on Java $best_major ($JAVA_HOME)"

# The distribution, downloaded and checked against Maven Central's checksum once.
mkdir -p "$cache"
dist="$cache/keycloak-$version"
if [ ! -x "$dist/bin/kc.sh" ]; then
  name="keycloak-quarkus-dist-$version.tar.gz"
  url="https://repo1.maven.org/maven2/org/keycloak/keycloak-quarkus-dist/$version/$name"
  if [ ! -f "$cache/$name" ]; then
    started=$SECONDS
    curl -fsSL --retry 3 -o "$cache/$name.part" "$url"
    expected="$(curl -fsSL --retry 3 "$url.sha1" | awk '{ print $1 }')"
    actual="$(sha1sum "$cache/$name.part" | awk '{ print $1 }')"
    if [ "$expected" != "$actual" ]; then
      echo "$name: checksum $actual, Maven Central says $expected" >&2
      rm -f "$cache/$name.part"
      exit 1
    fi
    mv "$cache/$name.part" "$cache/$name"
    echo "downloaded $name ($(du -h "$cache/$name" | cut -f1)) in $((SECONDS - started)) s"
  fi
  rm -rf "$cache/unpacking"
  mkdir "$cache/unpacking"
  tar -xzf "$cache/$name" -C "$cache/unpacking"
  rm -rf "$dist"
  mv "$cache/unpacking/keycloak-$version" "$dist"
  rmdir "$cache/unpacking"
fi

# Each run gets a Keycloak home of its own in a temporary directory: the distribution's files
# linked in, and its own data directory (H2 database, realm import, transaction logs).
work="$(mktemp -d)"
keycloak_pid=""
stop_keycloak() {
  # The whole process group: kc.sh runs Java as its child.
  if [ -n "$keycloak_pid" ]; then
    kill -TERM -- "-$keycloak_pid" 2>/dev/null || true
    for _ in $(seq 1 30); do
      kill -0 -- "-$keycloak_pid" 2>/dev/null || break
      sleep 1
    done
    kill -KILL -- "-$keycloak_pid" 2>/dev/null || true
    wait "$keycloak_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap stop_keycloak EXIT
trap 'exit 130' INT TERM

home="$work/keycloak"
mkdir -p "$home/data/import"
cp -R "$dist/bin" "$home/bin"
for part in "$dist"/*; do
  case "$(basename "$part")" in
    bin | data) ;;
    *) ln -s "$part" "$home/$(basename "$part")" ;;
  esac
done

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
base="http://127.0.0.1:$port"

# The realm: a public client for the app (password grant for the test), access tokens naming
# the sync server in `aud` and the person's groups, by name, in `groups`.
cat >"$home/data/import/clinic-realm.json" <<JSON
{
  "realm": "clinic",
  "enabled": true,
  "accessTokenLifespan": 300,
  "groups": [
    { "name": "east-therapists", "path": "/east-therapists" },
    { "name": "clinic-admins", "path": "/clinic-admins" }
  ],
  "clients": [
    {
      "clientId": "fieldsync-app",
      "name": "Fieldsync",
      "enabled": true,
      "publicClient": true,
      "standardFlowEnabled": false,
      "directAccessGrantsEnabled": true,
      "protocol": "openid-connect",
      "protocolMappers": [
        {
          "name": "fieldsync audience",
          "protocol": "openid-connect",
          "protocolMapper": "oidc-audience-mapper",
          "config": {
            "included.custom.audience": "fieldsync",
            "access.token.claim": "true",
            "id.token.claim": "false",
            "introspection.token.claim": "true"
          }
        },
        {
          "name": "groups",
          "protocol": "openid-connect",
          "protocolMapper": "oidc-group-membership-mapper",
          "config": {
            "claim.name": "groups",
            "full.path": "false",
            "access.token.claim": "true",
            "id.token.claim": "false",
            "userinfo.token.claim": "false",
            "introspection.token.claim": "true"
          }
        }
      ]
    }
  ],
  "users": [
    {
      "username": "ada",
      "enabled": true,
      "firstName": "Ada",
      "lastName": "Therapist",
      "email": "ada@clinic.example",
      "emailVerified": true,
      "credentials": [{ "type": "password", "value": "$ada_password", "temporary": false }],
      "groups": ["/east-therapists"]
    },
    {
      "username": "root",
      "enabled": true,
      "firstName": "Root",
      "lastName": "Admin",
      "email": "root@clinic.example",
      "emailVerified": true,
      "credentials": [{ "type": "password", "value": "$root_password", "temporary": false }],
      "groups": ["/clinic-admins"]
    }
  ]
}
JSON

log="$work/keycloak.log"
started=$SECONDS
# Its own process group (setsid), so that stopping it stops every process it started.
(cd "$home" && exec setsid bin/kc.sh start-dev \
  --http-host 127.0.0.1 --http-port "$port" --import-realm) >"$log" 2>&1 &
keycloak_pid=$!

discovery="$base/realms/clinic/.well-known/openid-configuration"
until document="$(curl -fsS "$discovery" 2>/dev/null)"; do
  if ! kill -0 "$keycloak_pid" 2>/dev/null; then
    echo "Keycloak exited before it answered; its log:" >&2
    cat "$log" >&2
    exit 1
  fi
  if [ $((SECONDS - started)) -ge "$boot_timeout" ]; then
    echo "Keycloak did not answer at $discovery within $boot_timeout s; its log:" >&2
    cat "$log" >&2
    exit 1
  fi
  sleep 1
done
echo "Keycloak answered after $((SECONDS - started)) s"

# Keycloak names its issuer after the host it is asked by: the server must be configured with
# the same base URL the tokens are requested from.
issuer="$(printf '%s' "$document" | grep -o '"issuer":"[^"]*"' | cut -d'"' -f4)"
if [ "$issuer" != "$base/realms/clinic" ]; then
  echo "the discovery document names issuer '$issuer', not $base/realms/clinic" >&2
  exit 1
fi

cd "$root"
KEYCLOAK_URL="$base" cargo test -p fieldsync-tests --test identity keycloak:: -- --ignored --nocapture
