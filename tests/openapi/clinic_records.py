#!/usr/bin/env python3
"""The records API's OpenAPI document specialised to one app schema, for the fuzzer.

The served document describes any collection, so its record values are free-form objects: a
fuzzer given only that sends mostly undeclared fields, which the server refuses before any
merge. This writes a copy with one path per collection of the schema and each field typed as
the schema declares it (in requests and in answers), so that the fuzzer reaches the
validation, the Automerge edits and the reads of real values, and checks that what the
server answers has the declared types, in the change feed's changes too. The feed's long poll
waits at most a second here (`wait`; the served document says 60), so that a case that finds
nothing new takes a second rather than a minute. Everything else (parameters, answers, errors)
is the served document's.

Usage: clinic_records.py SERVED_DOCUMENT APP_SCHEMA SCOPES OUTPUT
SCOPES is a comma-separated list of the scopes the scope field may name.
"""

import copy
import json
import sys

INT64 = {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1}
ATTACHMENT = {
    "type": "object",
    "additionalProperties": False,
    "required": ["sha256", "size", "media_type"],
    "properties": {
        "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "size": {"type": "integer", "minimum": 0, "maximum": 2**53},
        "media_type": {"type": "string", "pattern": "^[a-z]{1,12}/[a-z0-9.+-]{1,20}$"},
        "name": {"type": ["string", "null"]},
    },
}


def value_schema(field):
    """The JSON Schema of a value of `field`, as the app schema declares it."""
    kind = field["type"]
    if kind in ("string", "text", "reference"):
        # A reference is any string: its target may not have arrived yet (nor ever exist).
        return {"type": "string"}
    if kind in ("integer", "timestamp"):
        return dict(INT64)
    if kind == "float":
        return {"type": "number"}
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "json":
        return {}
    if kind == "attachment":
        return copy.deepcopy(ATTACHMENT)
    raise SystemExit(f"unknown field type {kind}")


def nullable(schema):
    """`schema`, or null (which clears a field)."""
    return {"anyOf": [schema, {"type": "null"}]}


def typed(properties, required):
    """Values with these `properties`, and no others."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": required,
        "properties": properties,
    }


def fields_schemas(collection, scopes):
    """The values of a new record, of an update, and of a record as answered."""
    written, answered = {}, {}
    for name, field in collection["fields"].items():
        schema = value_schema(field)
        if name == collection["scope_field"]:
            schema = {"type": "string", "enum": scopes}
        # A required field may not be cleared.
        written[name] = schema if field.get("required") else nullable(schema)
        answered[name] = nullable(value_schema(field))
    required = [n for n, f in collection["fields"].items() if f.get("required")]
    return typed(written, required), typed(written, []), typed(answered, [])


def request_body(operation):
    """The JSON Schema of an operation's request body."""
    return operation["requestBody"]["content"]["application/json"]["schema"]


def specialise(served, app_schema, scopes):
    """`served` with one path per collection of `app_schema`, its values typed."""
    document = copy.deepcopy(served)
    generic = document["paths"]
    document["info"]["title"] += " (specialised to one app schema, for testing)"
    paths = {"/v1/records/openapi.json": generic["/v1/records/openapi.json"]}
    schemas = document["components"]["schemas"]
    for name, collection in app_schema["collections"].items():
        new, update, answered = fields_schemas(collection, scopes)
        title = name.capitalize()
        schemas[f"{title}Fields"] = answered
        ref = {"$ref": f"#/components/schemas/{title}Fields"}
        many = copy.deepcopy(generic["/v1/records/{collection}"])
        one = copy.deepcopy(generic["/v1/records/{collection}/{id}"])
        for operations in (many, one):
            for operation in operations.values():
                operation["parameters"] = [
                    p for p in operation["parameters"] if p["name"] != "collection"
                ]
        for operation, fields in ((many["post"], new), (one["patch"], update)):
            request_body(operation)["properties"]["fields"] = fields
            request_body(operation).pop("example")
        filters = next(p for p in many["get"]["parameters"] if p["name"] == "filters")
        filters["schema"]["propertyNames"] = {
            "enum": [f"field.{field}" for field in collection["fields"]]
        }
        filters.pop("example")
        scope = next(p for p in many["get"]["parameters"] if p["name"] == "scope")
        scope["schema"] = {"type": "string", "enum": scopes}
        # The records the test creates (NAME-1, NAME-10 and NAME-11 in each collection), so
        # that each call reaches one; the served document's run tries other ids. NAME-1 may
        # be deleted by then; NAME-11 is the one this run deletes.
        singular = name.rstrip("s")
        ids = {
            "get": [f"{singular}-{n}" for n in (1, 10, 11)],
            "patch": [f"{singular}-10"],
            "delete": [f"{singular}-11"],
        }
        for method, operation in one.items():
            for parameter in operation["parameters"]:
                if parameter["name"] == "id":
                    parameter["schema"] = {"type": "string", "enum": ids[method]}
                    parameter["example"] = ids[method][-1]
        # The answers' values, typed.
        page = copy.deepcopy(schemas["RecordPage"])
        page["properties"]["records"]["items"]["properties"]["fields"] = ref
        record = copy.deepcopy(schemas["Record"])
        record["properties"]["fields"] = ref
        schemas[f"{title}Page"] = page
        schemas[f"{title}Record"] = record
        many["get"]["responses"]["200"]["content"]["application/json"]["schema"] = {
            "$ref": f"#/components/schemas/{title}Page"
        }
        one["get"]["responses"]["200"]["content"]["application/json"]["schema"] = {
            "$ref": f"#/components/schemas/{title}Record"
        }
        paths[f"/v1/records/{name}"] = many
        paths[f"/v1/records/{name}/{{id}}"] = one
    paths["/v1/changes"] = feed(generic["/v1/changes"], schemas, app_schema)
    document["paths"] = paths
    return document


def feed(served, schemas, app_schema):
    """The change feed's path, its long poll at most a second long and each change's values
    typed by its collection (the `NAMEFields` schemas `specialise` adds)."""
    path = copy.deepcopy(served)
    wait = next(p for p in path["get"]["parameters"] if p["name"] == "wait")
    wait["schema"]["maximum"] = 1
    wait["description"] += " (At most 1 in this document, so that the fuzzer's cases are quick.)"
    change = copy.deepcopy(schemas["FeedChange"])
    change["properties"]["collection"] = {"enum": list(app_schema["collections"])}
    change["allOf"] = [
        {
            "if": {"properties": {"collection": {"const": name}}},
            "then": {
                "properties": {
                    "fields": {"$ref": f"#/components/schemas/{name.capitalize()}Fields"}
                }
            },
        }
        for name in app_schema["collections"]
    ]
    schemas["ClinicFeedChange"] = change
    page = copy.deepcopy(schemas["ChangePage"])
    page["properties"]["changes"]["items"] = {"$ref": "#/components/schemas/ClinicFeedChange"}
    schemas["ClinicChangePage"] = page
    content = path["get"]["responses"]["200"]["content"]["application/json"]
    content["schema"] = {"$ref": "#/components/schemas/ClinicChangePage"}
    return path


def main():
    served_path, schema_path, scopes, output = sys.argv[1:]
    with open(served_path) as f:
        served = json.load(f)
    with open(schema_path) as f:
        app_schema = json.load(f)
    document = specialise(served, app_schema, scopes.split(","))
    with open(output, "w") as f:
        json.dump(document, f, indent=2)


if __name__ == "__main__":
    main()
