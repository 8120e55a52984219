"""Lists a vendbox's paid resources with the official x402 Bazaar client
(`x402.extensions.bazaar`, Python x402 2.25.0), and checks each declaration as a facilitator
does (`validate_discovery_extension`). Prints one JSON object: the items (resource, price,
description) and the validation errors.

Usage: bazaar_list.py VENDBOX_URL
"""

import json
import sys

from x402.extensions.bazaar import with_bazaar
from x402.extensions.bazaar.facilitator import validate_discovery_extension
from x402.extensions.bazaar.facilitator_client import ListDiscoveryResourcesParams
from x402.http import HTTPFacilitatorClientSync

client = with_bazaar(HTTPFacilitatorClientSync({"url": sys.argv[1]}))
listing = client.extensions.bazaar.list_resources(ListDiscoveryResourcesParams(type="http", limit=100))
items, errors = [], []
for item in listing.items:
    bazaar = (item.extensions or {}).get("bazaar")
    if bazaar is None:
        errors.append(f"{item.resource}: no bazaar extension")
    else:
        result = validate_discovery_extension(bazaar)
        if not result.valid:
            errors.append(f"{item.resource}: {result.errors}")
    items.append({
        "resource": item.resource,
        "description": item.description,
        "amount": item.accepts[0]["amount"] if item.accepts else None,
        "method": (bazaar or {}).get("info", {}).get("input", {}).get("method"),
    })
print(json.dumps({"x402Version": listing.x402_version, "total": listing.pagination.total, "items": items, "errors": errors}))
