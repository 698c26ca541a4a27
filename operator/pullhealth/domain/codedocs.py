"""The codes reference, generated from the code catalog (docs/codes.md is its output)."""

from __future__ import annotations

from pullhealth.domain.codes import ACR_CASES, CATALOG, DOCKER_CONFIG, KIND_REMEDIATION, Code, RegistryKind

HEADER = """# Diagnosis codes

Generated from `operator/pullhealth/domain/codes.py` by `pullhealth codes > docs/codes.md`;
a test fails when this file and the catalog differ. `<name>` marks a value filled in
from the evidence (registry, repository, tag, secret, ...). The remediation fits the
registry: the first list is for ACR (and for a message naming no registry), refined by the
ACR case the evidence singles out (see [acr-guide.md](acr-guide.md)); Amazon ECR
(`*.dkr.ecr.*.amazonaws.com`), Google Artifact Registry / Container Registry (`*-docker.pkg.dev`,
`gcr.io`), Docker Hub and other registries get their own where the advice differs.

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
        heading = "Remediation" if code not in KIND_REMEDIATION else "Remediation (ACR, or no registry known)"
        out.append(f"\n{heading}:\n\n")
        out.extend(_steps(info.remediation))
    for kind, steps in KIND_REMEDIATION.get(code, {}).items():
        out.append(f"\nRemediation for {_KIND_NAMES[kind]}:\n\n")
        out.extend(_steps(steps))
    for case in (c for c in ACR_CASES if c.code is code):
        out.append(f"\nACR case `{case.name}` ({case.when}): {_show(case.info.summary)}\n\n")
        out.extend(_steps(case.info.remediation))
    if code in DOCKER_CONFIG:
        variant = DOCKER_CONFIG[code]
        out.append(
            f"\nFor a docker config file (`pullhealth check --docker-config`): {_show(variant.summary)}\n\n"
        )
        out.extend(_steps(variant.remediation))
    return "".join(out)


_KIND_NAMES = {
    RegistryKind.GENERIC: "other registries (also ECR, GCR and Docker Hub where not listed)",
    RegistryKind.ECR: "Amazon ECR",
    RegistryKind.GCR: "Google Artifact Registry / Container Registry",
    RegistryKind.DOCKER_HUB: "Docker Hub",
    RegistryKind.ACR: "ACR",
}


def _steps(steps: tuple[str, ...]) -> list[str]:
    return [
        f"{i}. `{_show(step)}`\n" if step.startswith(("az ", "kubectl ")) else f"{i}. {_show(step)}\n"
        for i, step in enumerate(steps, 1)
    ]


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
