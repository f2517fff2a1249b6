#!/usr/bin/env bash
# Fetches s3proxy (a real S3 API server in one jar, run by the attachment bucket's tests through
# tests/src/s3proxy.rs) from Maven Central into target/s3proxy/, once: a later run finds it
# there. The download is checked against Maven Central's SHA-1 before it takes the final name.
# Prints the jar's path on stdout; progress and errors go to stderr.
#
# The tests look for the jar at that path, or at FIELDSYNC_S3PROXY_JAR when it is set.
set -euo pipefail

version="4.1.0"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache="$root/target/s3proxy"
jar="$cache/s3proxy-$version.jar"
url="https://repo1.maven.org/maven2/org/gaul/s3proxy/$version/s3proxy-$version-jar-with-dependencies.jar"

if [ ! -f "$jar" ]; then
  mkdir -p "$cache"
  # A name of this run's own, so that two runs at once do not write into one file.
  part="$jar.$$.part"
  trap 'rm -f "$part"' EXIT
  started=$SECONDS
  echo "downloading s3proxy $version from Maven Central" >&2
  curl -fsSL --retry 3 --retry-delay 2 -o "$part" "$url"
  expected="$(curl -fsSL --retry 3 --retry-delay 2 "$url.sha1" | awk '{ print $1 }')"
  actual="$(sha1sum "$part" | awk '{ print $1 }')"
  if [ -z "$expected" ] || [ "$expected" != "$actual" ]; then
    echo "s3proxy-$version.jar: SHA-1 $actual, Maven Central says '$expected'" >&2
    exit 1
  fi
  mv "$part" "$jar"
  echo "downloaded s3proxy $version ($(du -h "$jar" | cut -f1)) in $((SECONDS - started)) s" >&2
fi
echo "$jar"
