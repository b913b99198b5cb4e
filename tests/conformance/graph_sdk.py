#!/usr/bin/env python3
"""Parses Graph simulator payloads with Microsoft's msgraph-sdk models.

Input: a JSON file {"delta_pages": [...], "contact": {...}, "folders": {...}, "error": {...}}
holding responses captured from the simulator. Each is parsed with the SDK's generated
models through kiota's JSON parse node; a property the SDK does not model ends up in
`additional_data`, so any such key (other than known annotations) is reported as a
mismatch. Exit status 0 means every payload parsed cleanly.

Usage: graph_sdk.py PAYLOADS.json
"""

import json
import sys

from kiota_serialization_json.json_parse_node_factory import JsonParseNodeFactory
from msgraph.generated.models.contact import Contact
from msgraph.generated.models.contact_folder_collection_response import (
    ContactFolderCollectionResponse,
)
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.users.item.contact_folders.item.contacts.delta.delta_get_response import (
    DeltaGetResponse,
)

ANNOTATIONS = {"@odata.etag", "@odata.context"}
problems = []


def parse(payload, cls):
    node = JsonParseNodeFactory().get_root_parse_node(
        "application/json", json.dumps(payload).encode("utf-8")
    )
    return node.get_object_value(cls)


def extra(obj, where, allowed=frozenset()):
    for k in (getattr(obj, "additional_data", None) or {}):
        if k not in allowed:
            problems.append(f"{where}: '{k}' is not modelled by msgraph-sdk")


def check_contact(c, where, allowed):
    extra(c, where, allowed)
    for i, e in enumerate(c.email_addresses or []):
        extra(e, f"{where}.emailAddresses[{i}]")
    for name in ("home_address", "business_address", "other_address"):
        a = getattr(c, name)
        if a is not None:
            extra(a, f"{where}.{name}")


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        data = json.load(f)
    report = {"rows": 0, "removed": 0}
    for n, page in enumerate(data["delta_pages"]):
        r = parse(page, DeltaGetResponse)
        if (r.odata_next_link is None) == (r.odata_delta_link is None):
            problems.append(f"delta page {n}: needs exactly one of nextLink and deltaLink")
        extra(r, f"delta page {n}", ANNOTATIONS)
        for i, c in enumerate(r.value or []):
            where = f"delta page {n} row {i}"
            if c.odata_type != "#microsoft.graph.contact":
                problems.append(f"{where}: odata_type {c.odata_type!r}")
            if not c.id:
                problems.append(f"{where}: no id")
            if "@removed" in (c.additional_data or {}):
                report["removed"] += 1
            check_contact(c, where, {"@odata.etag", "@removed"})
            report["rows"] += 1
    c = parse(data["contact"], Contact)
    check_contact(c, "contact", ANNOTATIONS)
    if c.birthday is None or c.birthday.year != 1604:
        problems.append(f"contact: birthday {c.birthday!r} is not a timestamp in 1604")
    if c.change_key is None or c.last_modified_date_time is None:
        problems.append("contact: changeKey or lastModifiedDateTime missing")
    folders = parse(data["folders"], ContactFolderCollectionResponse)
    extra(folders, "folders", ANNOTATIONS)
    for i, f in enumerate(folders.value or []):
        extra(f, f"folders[{i}]")
        if not f.display_name or not f.parent_folder_id:
            problems.append(f"folders[{i}]: displayName or parentFolderId missing")
    err = parse(data["error"], ODataError)
    if err.error is None or err.error.code != "SyncStateNotFound":
        problems.append("error: code is not SyncStateNotFound")
    elif err.error.inner_error is None or not err.error.inner_error.request_id:
        problems.append("error: innerError.request-id missing")
    report["problems"] = problems
    print(json.dumps(report))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
