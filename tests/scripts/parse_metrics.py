"""Parses a /metrics page with the Python prometheus_client parsers and prints its families as JSON.

Usage: parse_metrics.py text|openmetrics FILE
The text format goes through prometheus_client.parser.text_string_to_metric_families, OpenMetrics
through prometheus_client.openmetrics.parser.text_string_to_metric_families (strict: a malformed
page raises). Output: {"families": [{"name", "type", "samples": [[name, labels, value]]}]}.
"""
import json
import math
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families
from prometheus_client.parser import text_string_to_metric_families as text_families


def main() -> None:
    kind, path = sys.argv[1], sys.argv[2]
    with open(path, encoding="utf-8") as f:
        page = f.read()
    parse = text_families if kind == "text" else om_families
    out = []
    for fam in parse(page):
        samples = []
        for s in fam.samples:
            v = s.value
            samples.append([s.name, dict(s.labels), "+Inf" if math.isinf(v) else v])
        out.append({"name": fam.name, "type": fam.type, "samples": samples})
    json.dump({"families": out}, sys.stdout)


if __name__ == "__main__":
    main()
