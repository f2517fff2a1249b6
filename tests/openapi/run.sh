#!/usr/bin/env bash
# Fuzzes the records API (the change feed among it) and the admin API from their OpenAPI
# documents with schemathesis (from PyPI), against a real server: builds fieldsync-server, seeds
# a throwaway SQLite database with the clinic fixture's schema, a service account and an
# administrator, starts the server on a free loopback port without request limits, creates a
# few records, then runs schemathesis on each document as it is served (and on the records
# API's specialised to the fixture's schema, clinic_records.py). It fails on any 5xx answer and
# on any answer the document does not describe (its status, content type or body).
#
# Deterministic: a fixed seed, one worker, nothing kept between runs (schemathesis.toml). Reports
# (JUnit, every exchange as HAR, and the server's log) go to target/openapi/. Takes about a
# minute once built (on 2 cores), and some 10 seconds more the first time, to install.
#
# OPENAPI_MAX_EXAMPLES sets the examples tried per operation and phase (default 40), and
# OPENAPI_SEED the seed, to explore further than the test command does.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"
out="$target/openapi"
max_examples="${OPENAPI_MAX_EXAMPLES:-40}"
seed="${OPENAPI_SEED:-20261207}"

# schemathesis in a virtual environment of its own under target/, so that its dependencies
# do not move those of the bindings' tests.
schemathesis_version="4.32.5"
venv="$out/venv"
installed="$("$venv/bin/schemathesis" --version 2>/dev/null || true)"
if [ "$installed" != "schemathesis, version $schemathesis_version" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "schemathesis==$schemathesis_version"
fi

cargo build --quiet -p fieldsync-server
server="$target/debug/fieldsync-server"

work="$(mktemp -d)"
pid=""
cleanup() {
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

db="$work/server.db"
cli() { "$server" --db "$db" "$@"; }
# The token `enroll-device` prints, on its line `token: fs_...`.
enroll() { cli enroll-device --user "$1" --name "$2" | sed -n 's/^token: //p'; }

cli schema set core/tests/fixtures/clinic.schema.json >/dev/null
cli create-user ehr --service >/dev/null
cli grant --user ehr --scope north >/dev/null
cli grant --user ehr --scope south --access read >/dev/null
ehr="$(enroll ehr connector)"
cli create-user root --admin >/dev/null
admin="$(enroll root laptop)"
[ -n "$ehr" ] && [ -n "$admin" ] || { echo "enroll-device printed no token" >&2; exit 1; }

# Whatever the server would send elsewhere (a webhook the fuzzer adds with an https URL it
# made up) goes through a proxy on a closed loopback port, so nothing leaves the machine.
mkdir -p "$out"
nowhere="http://127.0.0.1:9"
HTTPS_PROXY="$nowhere" HTTP_PROXY="$nowhere" ALL_PROXY="$nowhere" NO_PROXY="" \
    https_proxy="$nowhere" http_proxy="$nowhere" all_proxy="$nowhere" no_proxy="" \
    "$server" --db "$db" serve --listen 127.0.0.1:0 --requests-per-second 0 \
    >"$work/stdout" 2>"$out/server.log" &
pid=$!
base=""
for _ in $(seq 1 300); do
    base="$(sed -n 's|^listening on \(http://[^ ]*\)$|\1|p' "$work/stdout")"
    [ -n "$base" ] && break
    kill -0 "$pid" 2>/dev/null || { cat "$out/server.log" >&2; exit 1; }
    sleep 0.1
done
[ -n "$base" ] || { echo "the server did not say where it listens" >&2; exit 1; }
echo "server at $base (log: $out/server.log)"

# Records for the reads to find: client-1 is the served document's example; the specialised
# document's are NAME-10 (read and updated) and NAME-11 (deleted) in each collection.
create() {
    curl --silent --show-error --fail-with-body -o /dev/null \
        -H "Authorization: Bearer $ehr" -H "Content-Type: application/json" \
        --data "{\"id\": \"$2\", \"fields\": $3}" "$base/v1/records/$1"
}
for n in 1 10 11; do
    create therapists "therapist-$n" '{"team_id": "north", "name": "Kim"}'
    create clients "client-$n" '{"caseload_id": "north", "name": "Sam", "birth_year": 2015,
        "active": true, "risk_score": 0.5, "next_visit": 1796000000000, "notes": "Likes trains.",
        "goals": {"reading": ["daily"]}, "therapist": "therapist-1"}'
    create sessions "session-$n" '{"caseload_id": "north", "client": "client-1",
        "started_at": 1795000000000, "note": "Read two pages."}'
    create invoices "invoice-$n" '{"caseload_id": "north", "client": "client-1", "amount": 80}'
done

# Each run goes through every phase: the document's examples, the boundaries of each schema,
# random data (valid and invalid), then sequences of calls that use what earlier ones answered;
# each answer is checked against the document.
checks="not_a_server_error,status_code_conformance,content_type_conformance"
checks="$checks,response_schema_conformance"
fuzz() {
    local name="$1" location="$2" token="$3"
    shift 3
    echo "schemathesis: $name"
    # From target/, where Hypothesis keeps its caches.
    (cd "$out" && "$venv/bin/schemathesis" --no-color \
        --config-file "$root/tests/openapi/schemathesis.toml" run "$location" \
        --url "$base" \
        --header "Authorization: Bearer $token" \
        --checks "$checks" \
        --mode all \
        --max-examples "$max_examples" \
        --seed "$seed" \
        --generation-database none \
        --workers 1 \
        --request-timeout 10 \
        --report junit,har \
        --report-junit-path "$out/$name.junit.xml" \
        --report-har-path "$out/$name.har" \
        "$@")
}
# The records API as served, then as it is for the fixture's schema (typed values). The change
# feed only in the second: there its long poll waits a second at most, where the served
# document's 60 would make each case that finds nothing new wait out the request timeout.
curl --silent --show-error --fail -o "$work/records.json" "$base/v1/records/openapi.json"
python3 tests/openapi/clinic_records.py "$work/records.json" \
    core/tests/fixtures/clinic.schema.json north,south "$out/records.clinic.json"
status=0
fuzz records "$base/v1/records/openapi.json" "$ehr" --exclude-path /v1/changes || status=1
fuzz records-clinic "$out/records.clinic.json" "$ehr" || status=1
# The admin API; revoking devices last, since the fuzzer revokes the administrator's own.
revoke_device="DELETE /v1/admin/devices/{id}"
fuzz admin "$base/v1/admin/openapi.json" "$admin" --exclude-name "$revoke_device" || status=1
fuzz admin-revoke "$base/v1/admin/openapi.json" "$admin" --include-name "$revoke_device" ||
    status=1
exit "$status"
