"""Request counters scraped from Prometheus text: kloop's own and the apiserver's."""

from __future__ import annotations

from collections import Counter

from prometheus_client.parser import text_string_to_metric_families

Tally = Counter[tuple[str, str]]

# apiserver_request_total's verb label -> the verbs kloop_api_requests_total uses
_APISERVER_VERBS = {
    "GET": "get",
    "LIST": "list",
    "WATCH": "watch",
    "WATCHLIST": "watch",
    "POST": "create",
    "PUT": "update",
    "PATCH": "patch",
    "APPLY": "patch",
    "DELETE": "delete",
    "DELETECOLLECTION": "deletecollection",
}


def kloop_requests(text: str) -> Tally:
    """``kloop_api_requests_total`` by (verb, resource)."""
    tally: Tally = Counter()
    for family in text_string_to_metric_families(text):
        if family.name == "kloop_api_requests":
            for s in family.samples:
                if s.name.endswith("_total"):
                    tally[s.labels["verb"], s.labels["resource"]] += int(s.value)
    return tally


def apiserver_requests(text: str) -> Tally:
    """``apiserver_request_total`` by (verb, resource[/subresource]), resource requests only."""
    tally: Tally = Counter()
    for family in text_string_to_metric_families(text):
        if family.name == "apiserver_request":
            for s in family.samples:
                resource = s.labels.get("resource", "")
                if not s.name.endswith("_total") or not resource:
                    continue
                if s.labels.get("subresource"):
                    resource = f"{resource}/{s.labels['subresource']}"
                verb = _APISERVER_VERBS.get(s.labels["verb"], s.labels["verb"].lower())
                tally[verb, resource] += int(s.value)
    return tally


def delta(after: Tally, before: Tally) -> Tally:
    return Counter({k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)})
