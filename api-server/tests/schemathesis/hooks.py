"""schemathesis hooks for api-server/tests/openapi_conformance.rs (SCHEMATHESIS_HOOKS=hooks).

Two narrow corrections of the generator, never of the server's answers:

1. An Idempotency-Key names one intended create: the same key with another body is refused with
   422 by design (draft-ietf-httpapi-idempotency-key-header). The generator draws keys from a
   small space ("0", "00", ...), so different bodies share keys and each pair would be reported
   as a schema-valid request rejected. Each valid key is made unique before the call; an invalid
   one (a negative case) is sent as generated, so that its rejection is still checked. Replays
   and reuse are tested by api-server/tests/api.rs.

2. The coverage phase builds header values from letters and digits only, so it cannot produce an
   If-Match the document's pattern accepts (every one holds `"` or `*`); it then sends "0" in
   cases it labels valid. In such a case (positive, and its If-Match refused by the pattern the
   document itself gives) the optional header is left out, which makes the case what its label
   says; what the case varies (body, path) is still sent and checked. Negative cases keep their
   If-Match as generated.
"""

import itertools
import re

import schemathesis

_VALID_KEY = re.compile(r"[!-~]{1,255}")
_counter = itertools.count(1)


@schemathesis.hook
def before_call(context, case, kwargs):
    headers = case.headers
    if not headers:
        return
    key = headers.get("Idempotency-Key")
    if isinstance(key, str) and _VALID_KEY.fullmatch(key):
        headers["Idempotency-Key"] = f"conformance-{next(_counter)}"
    if_match = headers.get("If-Match")
    pattern = _documented_pattern(case, "If-Match")
    if isinstance(if_match, str) and pattern and _is_positive(case) and not re.search(pattern, if_match):
        del headers["If-Match"]


def _documented_pattern(case, name):
    for parameter in case.operation.definition.raw.get("parameters", []):
        if parameter.get("in") == "header" and parameter.get("name") == name:
            return parameter.get("schema", {}).get("pattern")
    return None


def _is_positive(case):
    meta = case.meta
    return meta is not None and meta.generation.mode.is_positive
