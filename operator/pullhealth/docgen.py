"""The codes reference, generated from the code catalog (docs/codes.md is its output)."""

from __future__ import annotations

from pullhealth.codes import CATALOG, Code

HEADER = """# Diagnosis codes

Generated from `operator/pullhealth/codes.py` by `pullhealth codes > docs/codes.md`;
a test fails when this file and the catalog differ. `<name>` marks a value filled in
from the evidence (registry, repository, tag, secret, ...).

| code | az acr check-health | coarse |
|---|---|---|
"""


def codes_markdown() -> str:
    """Markdown reference of every code: summary, remediation, check-health mapping."""
    out = [HEADER]
    for code in Code:
        info = CATALOG[code]
        out.append(
            f"| [{code.value}](#{code.value.lower()}) | {info.check_health_error or ''} "
            f"| {'yes' if info.coarse else ''} |\n"
        )
    out.extend(code_markdown(code) for code in Code)
    return "".join(out)


def code_markdown(code: Code) -> str:
    """The Markdown section of one code (``pullhealth codes CODE``)."""
    info = CATALOG[code]
    out = [f"\n## {code.value}\n\n", f"Summary: {_show(info.summary)}\n"]
    if info.check_health_error:
        out.append(f"\n`az acr check-health` reports this as `{info.check_health_error}`.\n")
    if info.coarse:
        out.append(
            "\nCoarse: the message text cannot tell the causes apart; pullhealth's probes refine it.\n"
        )
    if info.remediation:
        out.append("\nRemediation:\n\n")
        out.extend(
            f"{i}. `{_show(step)}`\n" if step.startswith(("az ", "kubectl ")) else f"{i}. {_show(step)}\n"
            for i, step in enumerate(info.remediation, 1)
        )
    return "".join(out)


def _show(template: str) -> str:
    """Placeholders as <name>, escaped braces as single braces."""
    return (
        template.replace("{{", "\0")
        .replace("}}", "\1")
        .replace("{", "<")
        .replace("}", ">")
        .replace("\0", "{")
        .replace("\1", "}")
    )
