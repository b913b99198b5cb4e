#!/usr/bin/env python3
"""Drives the Google simulator with Google's own Python client.

The client is built from the discovery document shipped in the google-api-python-client
package (googleapiclient/discovery_cache/documents/people.v1.json), with the root URL
overridden to the simulator. It lists with page tokens, syncs with a sync token, creates,
updates and deletes contacts, and checks an expired sync token error. Exit status 0 means
every step behaved as the real API is documented to behave.

Usage: google_client.py --base http://127.0.0.1:PORT --token ACCESS_TOKEN --expect N
"""

import argparse
import json
import os
import sys

import googleapiclient
from google.oauth2.credentials import Credentials
from googleapiclient.discovery import build_from_document
from googleapiclient.errors import HttpError

FIELDS = "names,emailAddresses,phoneNumbers,addresses,organizations,birthdays,photos,memberships,metadata"


def load_doc():
    path = os.path.join(
        os.path.dirname(googleapiclient.__file__),
        "discovery_cache",
        "documents",
        "people.v1.json",
    )
    with open(path, encoding="utf-8") as f:
        return f.read()


def list_all(svc, **kw):
    """Lists every page; returns (people, next sync token, pages)."""
    people, pages = [], 0
    req = svc.people().connections().list(resourceName="people/me", **kw)
    last = None
    while req is not None:
        resp = req.execute()
        pages += 1
        people.extend(resp.get("connections", []))
        if "nextPageToken" in resp:
            assert "nextSyncToken" not in resp, "sync token before the last page"
        last = resp
        req = svc.people().connections().list_next(req, resp)
    return people, last.get("nextSyncToken"), pages


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--expect", type=int, required=True)
    args = ap.parse_args()

    svc = build_from_document(
        load_doc(),
        credentials=Credentials(token=args.token),
        client_options={"api_endpoint": args.base.rstrip("/") + "/"},
    )
    report = {}

    # 1. Full listing with page tokens and a sync token on the last page.
    people, sync, pages = list_all(svc, personFields=FIELDS, pageSize=7, requestSyncToken=True)
    assert len(people) == args.expect, (len(people), args.expect)
    assert pages == -(-args.expect // 7), pages
    assert sync, "no nextSyncToken"
    report["listed"] = len(people)
    report["pages"] = pages

    # 2. Create, update (etag chain), then sync with the token.
    created = svc.people().createContact(
        personFields="names,emailAddresses,metadata",
        body={
            "names": [{"givenName": "Ada", "familyName": "Lovelace"}],
            "emailAddresses": [{"value": "ada@example.com", "type": "work"}],
        },
    ).execute()
    rn = created["resourceName"]
    assert created["names"][0]["displayName"] == "Ada Lovelace", created
    # Updates carry the CONTACT source's etag (Source.etag), a different value from the
    # person's etag (Person.etag).
    source = [s for s in created["metadata"]["sources"] if s["type"] == "CONTACT"][0]
    assert source["etag"] != created["etag"], created
    sources = {"sources": [{"type": "CONTACT", "etag": source["etag"]}]}
    updated = svc.people().updateContact(
        resourceName=rn,
        updatePersonFields="emailAddresses",
        personFields="emailAddresses",
        body={"metadata": sources, "emailAddresses": [{"value": "ada@analytical.example"}]},
    ).execute()
    assert updated["emailAddresses"][0]["value"] == "ada@analytical.example"
    try:
        svc.people().updateContact(
            resourceName=rn,
            updatePersonFields="emailAddresses",
            body={"metadata": sources, "emailAddresses": []},
        ).execute()
        raise AssertionError("stale etag accepted")
    except HttpError as e:
        assert e.resp.status == 400, e.resp.status
    changed, sync2, _ = list_all(svc, personFields=FIELDS, syncToken=sync, requestSyncToken=True)
    assert [p["resourceName"] for p in changed] == [rn], changed
    report["synced_changes"] = len(changed)

    # 3. Batch create and batch update, starred group.
    batch = svc.people().batchCreateContacts(
        body={
            "contacts": [
                {"contactPerson": {"names": [{"givenName": f"Batch{i}"}]}} for i in range(3)
            ],
            "readMask": "names,metadata",
        }
    ).execute()
    made = [c["person"] for c in batch["createdPeople"]]
    assert len(made) == 3
    upd = svc.people().batchUpdateContacts(
        body={
            "contacts": {
                p["resourceName"]: {
                    "metadata": {"sources": [s for s in p["metadata"]["sources"] if s["type"] == "CONTACT"]},
                    "names": [{"givenName": "Renamed"}],
                }
                for p in made
            },
            "updateMask": "names",
            "readMask": "names",
        }
    ).execute()
    assert len(upd["updateResult"]) == 3
    group = svc.contactGroups().get(resourceName="contactGroups/myContacts", maxMembers=5).execute()
    assert group["memberCount"] == args.expect + 4, group

    # 4. Delete, then the sync shows the deletions.
    svc.people().deleteContact(resourceName=rn).execute()
    svc.people().batchDeleteContacts(body={"resourceNames": [p["resourceName"] for p in made]}).execute()
    changed, _, _ = list_all(svc, personFields="names", syncToken=sync2, requestSyncToken=True)
    deleted = [p for p in changed if p.get("metadata", {}).get("deleted")]
    assert len(deleted) == 4, changed
    report["synced_deletions"] = len(deleted)

    # 5. An unknown sync token is an expired one.
    try:
        svc.people().connections().list(resourceName="people/me", personFields="names", syncToken="bogus").execute()
        raise AssertionError("bogus sync token accepted")
    except HttpError as e:
        assert e.resp.status == 400
        body = json.loads(e.content)
        assert body["error"]["status"] == "FAILED_PRECONDITION"
        assert body["error"]["details"][0]["reason"] == "EXPIRED_SYNC_TOKEN"
    report["expired_token"] = "ok"

    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
