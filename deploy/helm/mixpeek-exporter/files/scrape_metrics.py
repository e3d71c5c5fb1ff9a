"""`helm test`: scrape the exporter's /metrics through its Service and check that they are the exporter's.

It runs on the exporter's own image, which has no shell and no curl but has Python and prometheus_client: no
other image to pull, mirror or trust. The URL and any basic auth credentials come from the environment. With
TLS the certificate is not verified here (serviceMonitor.tlsConfig says how Prometheus trusts it): this checks
that the exporter answers over HTTPS.
"""

from __future__ import annotations

import base64
import os
import ssl
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

EXPECTED = "mixpeek_exporter_build_info"


def scrape(url: str, username: str, password: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"SCRAPE_URL must be http(s)://, not {url!r}")
    request = urllib.request.Request(url)  # noqa: S310 - the scheme is checked above
    if username:
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(request, timeout=10, context=context) as response:  # noqa: S310
        body: bytes = response.read()
    return body.decode()


def main() -> int:
    url = os.environ["SCRAPE_URL"]
    try:
        text = scrape(url, os.environ.get("SCRAPE_USERNAME", ""), os.environ.get("SCRAPE_PASSWORD", ""))
        names = {family.name for family in text_string_to_metric_families(text)}
    except (OSError, ValueError) as exc:  # HTTP errors, refused connections, TLS failures; a bad exposition
        print(f"scraping {url} failed: {exc}", file=sys.stderr)
        return 1
    if EXPECTED not in names:
        print(f"{url} answered without {EXPECTED}: not the exporter's metrics", file=sys.stderr)
        return 1
    print(f"{url}: {len(names)} metric families, {EXPECTED} among them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
