"""Checks recorded HTTP exchanges against a seed API's own OpenAPI 3.1 document.

    python3 validate.py SEED.json EXCHANGES.json [--x402 "POST /api/machines" ...]

EXCHANGES.json is a list of {"method", "path", "status", "content_type", "body"} (body: the
JSON answer, or null). For each exchange whose path and method the seed documents, the status
must be one the operation lists (a `--x402 "METHOD /template"` operation may also answer an
x402 402, vendbox's addition) and, where the seed gives that answer a body, the content type
must be one it names and the body must validate against its schema. Exchanges on paths or
methods the seed does not document are skipped and listed. Prints one JSON object
{"checked": N, "skipped": [...], "failures": [...], "results": [...]} (`results`: per exchange,
in order, null when skipped or the list of what is wrong) and exits 1 when anything failed.

This is a small validator on openapi-schema-validator (the OAS 3.1 schema dialect, JSON Schema
2020-12 with OpenAPI's formats) rather than openapi-core, for two reasons: openapi-core 0.23
requires openapi-spec-validator below 0.9 while vendbox's API tests pin 0.9.0, and the H3RETIK
document writes an operation's `responses` as `{"$ref": "#/components/responses/X402SessionResponses"}`,
a reference to a map of statuses, which OpenAPI does not allow (a `$ref` may stand for one
Response object only) and so no OpenAPI library reads. Here every `$ref` met on the way to a
schema is followed, whatever it stands for; schemas themselves are resolved by the JSON Schema
validator against the whole document.
"""

import json
import re
import sys
import urllib.parse

from openapi_schema_validator import OAS31Validator, oas31_format_checker
from referencing import Registry
from referencing.jsonschema import DRAFT202012

BASE = "urn:vendbox:seed"


def escape(token):
    """A JSON pointer token."""
    return token.replace("~", "~0").replace("/", "~1")


def lookup(doc, pointer):
    node = doc
    for token in pointer.split("/")[1:]:
        node = node[token.replace("~1", "/").replace("~0", "~")]
    return node


def follow(doc, node, pointer):
    """Follows `$ref`s from `node` (found at `pointer`): the object they lead to and its pointer."""
    seen = set()
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/") or ref in seen:
            raise ValueError(f"cannot follow $ref {ref!r} at {pointer}")
        seen.add(ref)
        pointer = ref[1:]
        node = lookup(doc, pointer)
    return node, pointer


def template_of(doc, path):
    """The seed's path template that `path` falls under, literal paths first."""
    paths = doc.get("paths", {})
    if path in paths:
        return path
    for template in paths:
        parts = re.split(r"(\{[^/{}]+\})", template)
        pattern = "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts)
        if re.fullmatch(pattern, path):
            return template
    return None


class Seed:
    def __init__(self, doc):
        self.doc = doc
        self.registry = Registry().with_resource(BASE, DRAFT202012.create_resource(doc))

    def schema_errors(self, pointer, instance):
        """What is wrong with `instance` against the schema at `pointer`."""
        ref = BASE + "#" + urllib.parse.quote(pointer, safe="/~")
        validator = OAS31Validator(
            {"$ref": ref}, registry=self.registry, format_checker=oas31_format_checker
        )
        errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
        return [f"{'/'.join(map(str, e.absolute_path)) or '(body)'}: {e.message}" for e in errors]

    def check(self, exchange, x402_additions):
        """None when `exchange` is skipped; otherwise the list of what is wrong with it."""
        method = exchange["method"].lower()
        path = urllib.parse.urlsplit(exchange["path"]).path
        template = template_of(self.doc, path)
        if template is None or method not in self.doc["paths"][template]:
            return None
        op_pointer = "/paths/" + escape(template) + "/" + method
        operation = self.doc["paths"][template][method]
        responses, pointer = follow(self.doc, operation.get("responses", {}), op_pointer + "/responses")
        status = str(exchange["status"])
        key = next(
            (k for k in (status, status[0] + "XX", "default") if k in responses),
            None,
        )
        body = exchange.get("body")
        if key is None:
            name = f"{exchange['method'].upper()} {template}"
            if status == "402" and name in x402_additions:
                if not (
                    isinstance(body, dict)
                    and body.get("x402Version") == 1
                    and isinstance(body.get("accepts"), list)
                    and body["accepts"]
                ):
                    return [f"402 (vendbox's x402 addition) without an x402 v1 body: {body!r}"]
                return []
            documented = ", ".join(sorted(responses))
            return [f"status {status} is not documented (the seed lists {documented})"]
        response, pointer = follow(self.doc, responses[key], pointer + "/" + escape(key))
        content = response.get("content")
        if not content:
            return []
        media = (exchange.get("content_type") or "").split(";")[0].strip().lower()
        if media not in content:
            return [f"content type {media!r} is not documented (the seed names {', '.join(content)})"]
        if "schema" not in content[media]:
            return []
        schema_pointer = pointer + "/content/" + escape(media) + "/schema"
        return self.schema_errors(schema_pointer, body)


def main(argv):
    args = argv[1:]
    x402_additions = set()
    while "--x402" in args:
        at = args.index("--x402")
        x402_additions.add(args[at + 1])
        del args[at : at + 2]
    seed_path, exchanges_path = args
    with open(seed_path, encoding="utf-8") as f:
        seed = Seed(json.load(f))
    with open(exchanges_path, encoding="utf-8") as f:
        exchanges = json.load(f)
    report = {"checked": 0, "skipped": [], "failures": [], "results": []}
    for exchange in exchanges:
        name = f"{exchange['method'].upper()} {exchange['path']} -> {exchange['status']}"
        problems = seed.check(exchange, x402_additions)
        report["results"].append(problems)
        if problems is None:
            report["skipped"].append(name)
            continue
        report["checked"] += 1
        for problem in problems:
            report["failures"].append(f"{name}: {problem}; body: {json.dumps(exchange.get('body'))[:400]}")
    print(json.dumps(report))
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
