"""Review pass over the recorded/public corpus labels (run after record.py).

The recorder labels by failure *mode*; some modes produce the same text as others
(e.g. containerd prints the same 401 line for no credentials and a wrong password),
and text that cannot tell causes apart gets the coarse code with the causes as
candidates. Each rule below says why; changed rows get a "review" note.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data"

RULES: list[tuple[re.Pattern[str], str, list[str], str]] = [
    (re.compile(r"\[manifests [^\]]+\]: 401 Unauthorized|/manifests/[^: ]+: 401 Unauthorized$"), "ACCESS_DENIED",
     ["AUTH_REQUIRED", "CREDENTIALS_REJECTED", "PERMISSION_DENIED"],
     "the same 401 text is printed for no, wrong and insufficient credentials"),
    (re.compile(r"(fetch (anonymous |oauth )?token|bear(er)? token)[^\n]*(403 Forbidden|403 \(Forbidden\))"),
     "ACCESS_DENIED", ["AUTH_REQUIRED", "PERMISSION_DENIED", "REPOSITORY_NOT_FOUND"],
     "a 403 from the token service comes after the registry answered: not a network rule"),
    (re.compile(r"^(?=.*\.azurecr\.(?:io|cn|us)\b).*(\[manifests [^\]]+\]: 403 Forbidden$"
                r"|/(manifests|blobs)/[^ ]+: 403 Forbidden$|/manifests/[^\"]+\": Forbidden$)", re.DOTALL),
     "FIREWALL_FORBIDDEN", ["PERMISSION_DENIED"],
     "a bare 403 on an ACR host (registry or data endpoint) is how ACR's firewall answers"),
    (re.compile(r"https://[^/\s\"]*(\.cloudfront\.net|\.r2\.cloudflarestorage\.com|storage\.googleapis\.com"
                r"|\.s3[.-][^/\s\"]*amazonaws\.com|\.blob\.core\.windows\.net|production\.cloudflare\.docker\.com)"
                r"/[^\s]*:?\s+(403\b|Forbidden)"),
     "FIREWALL_FORBIDDEN", ["PROXY_ERROR", "PERMISSION_DENIED"],
     "a 403 from the storage/CDN host blobs are redirected to (pre-signed URLs) is an egress "
     "firewall or proxy that allows the registry but not its data host"),
    (re.compile(r"\[manifests [^\]]+\]: 403 Forbidden$|/(manifests|blobs)/[^ ]+: 403 Forbidden$"
                r"|/manifests/[^\"]+\": Forbidden$"),
     "PERMISSION_DENIED", ["REPOSITORY_NOT_FOUND", "FIREWALL_FORBIDDEN"],
     "a bare 403 on any registry but ACR means the identity may not pull (or the repository "
     "went private); ACR's firewall is recognised by its own text or an ACR host"),
    (re.compile(r"read: connection reset by peer$"), "FIREWALL_FORBIDDEN", ["PROXY_ERROR", "TLS_PROTOCOL_ERROR"],
     "a reset after the connection was accepted comes from a middlebox (firewall, DPI, "
     "TLS-inspecting proxy), not from a registry"),
    (re.compile(r"failed to fetch anonymous token: unexpected status: 5\d\d"), "REGISTRY_ERROR",
     ["CHALLENGE_ERROR"], "a 5xx from the token service is a server-side error (as the probe reports)"),
    (re.compile(r"failed to fetch anonymous token: Get [^:]+:[^ ]+ dial tcp [^ ]+: connect: connection refused"),
     "CONNECT_REFUSED", ["CHALLENGE_ERROR"], "the token realm refused the connection (as the probe reports)"),
    (re.compile(r"auth\.docker\.io/token.*(i/o timeout|Client\.Timeout exceeded)"), "CONNECT_TIMEOUT",
     ["CHALLENGE_ERROR"], "the token realm timed out (as the probe reports)"),
    (re.compile(r"Head \"https://ghcr\.io/v2/[^\"]+\": denied: denied$"), "ACCESS_DENIED",
     ["PERMISSION_DENIED", "AUTH_REQUIRED"], "GHCR says 'denied' for private and for missing packages"),
]


def main() -> int:
    changed = 0
    for name in ("containerd_messages.jsonl", "public_messages.jsonl"):
        path = DATA / name
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for row in rows:
            for pattern, code, candidates, why in RULES:
                if not pattern.search(row["text"]):
                    continue
                if row["code"] != code:  # the first matching rule decides, even when it agrees
                    row["review"] = f"was {row['code']}: {why}"
                    row["code"] = code
                    row["candidates"] = candidates
                    changed += 1
                break
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"relabelled {changed} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
