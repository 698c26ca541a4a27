"""The admission webhook's HTTPS server: every replica serves it (it only reads).

``POST /validate`` answers with warnings; ``POST /validate-deny`` (the webhook the
configuration sends namespaces labelled ``pullhealth.io/admission=deny`` to) refuses an
object whose images definitely cannot be pulled. Both always answer inside the API
server's ``timeout`` (its query parameter) and the admin's budget, whichever is shorter:
a check still running then is left to finish for the next apply, this answer carries no
warning for it. Anything unexpected (a malformed review, an error) is answered "allowed"
without warnings: the webhook never blocks an apply it cannot judge.

The serving certificate comes from :mod:`pullhealth.admission.certs` (generated and kept
in a Secret, the CA injected into the webhook configuration; or cert-manager's files),
re-read every ``REFRESH_SECONDS``. No kopf: started and stopped by the composition root.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import ssl
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from pullhealth import metrics, tlscerts
from pullhealth.admission import certs, decision
from pullhealth.admission.preflight import Preflight
from pullhealth.kube import watchcache
from pullhealth.runtime.state import Runtime

log = logging.getLogger(__name__)

REFRESH_SECONDS = 60.0  # the caBundle is put back this soon after a helm upgrade blanks it
RETRY_SECONDS = 5.0  # after a failed refresh (the configuration not created yet, at install)
MAX_BODY = 4 * 1024 * 1024  # an AdmissionReview holds the object twice (object, oldObject)
# Kept back from the API server's timeout for the answer's own way back.
MARGIN = 0.5
DEFAULT_HOSTS = ("localhost", "127.0.0.1")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)$")


def api_timeout(value: str | None) -> float | None:
    """The API server's ``?timeout=10s`` in seconds (None when absent or malformed)."""
    match = _DURATION.match(value or "")
    if not match:
        return None
    number, unit = float(match.group(1)), match.group(2)
    return number / 1000 if unit == "ms" else number * 60 if unit == "m" else number


class TLSSource:
    """Where the serving certificate comes from, and the CA injection when it is ours.

    Args:
        cert_dir: a directory with ``tls.crt`` and ``tls.key`` (cert-manager, your own);
            used as is when ``secret`` is empty, else where the generated files are written.
        secret: ``namespace/name`` of the Secret holding the generated bundle, or "".
        hosts: the names the generated certificate covers.
        webhook_name: the ValidatingWebhookConfiguration whose caBundle is kept set, or "".
        store, injector: the API calls (built from the runtime's client).
    """

    def __init__(
        self,
        cert_dir: str,
        secret: str,
        hosts: tuple[str, ...],
        webhook_name: str,
        store: certs.SecretStore | None,
        injector: certs.CaInjector | None,
    ) -> None:
        self.secret = secret
        self.hosts = hosts
        self.webhook_name = webhook_name
        self.store, self.injector = store, injector
        self._own_dir: tempfile.TemporaryDirectory[str] | None = None
        if cert_dir:
            self.dir = Path(cert_dir)
        else:
            self._own_dir = tempfile.TemporaryDirectory(prefix="pullhealth-admission-")
            self.dir = Path(self._own_dir.name)
        self._loaded: tuple[str, str] | None = None

    @property
    def generated(self) -> bool:
        return bool(self.secret)

    async def refresh(self, context: ssl.SSLContext) -> bool:
        """Load the current certificate into ``context`` (new connections use it); with a
        generated one, renew it when due and keep the caBundle injected. False when the
        caBundle could not be injected (retried sooner); raises when no certificate loads."""
        injected = True
        if self.generated and self.store is not None:
            namespace, _, name = self.secret.partition("/")
            bundle = await self.store.load_or_create(namespace, name, self.hosts)
            if (bundle.tls_crt, bundle.tls_key) != self._loaded:
                self.dir.mkdir(parents=True, exist_ok=True)
                key_file = self.dir / tlscerts.TLS_KEY
                key_file.touch(mode=0o600)
                key_file.write_text(bundle.tls_key)
                (self.dir / tlscerts.TLS_CRT).write_text(bundle.tls_crt)
            if self.webhook_name and self.injector is not None:
                try:
                    await self.injector.inject(self.webhook_name, bundle.ca_crt)
                except Exception as exc:
                    injected = False
                    log.warning(
                        "admission: cannot inject the CA into ValidatingWebhookConfiguration %s (%s%s); "
                        "retrying in %.0f s",
                        self.webhook_name,
                        type(exc).__name__,
                        f" HTTP {exc.status}" if hasattr(exc, "status") else "",
                        RETRY_SECONDS,
                    )
        crt, key = self.dir / tlscerts.TLS_CRT, self.dir / tlscerts.TLS_KEY
        current = (crt.read_text(), key.read_text())
        if current != self._loaded:
            context.load_cert_chain(str(crt), str(key))
            self._loaded = current
            log.info("admission: serving certificate loaded")
        return injected

    def close(self) -> None:
        if self._own_dir is not None:
            self._own_dir.cleanup()


class AdmissionServer:
    """The webhook's server on ``bind:port``, answering from a :class:`Preflight`.

    Args:
        preflight: the checks (the runtime's resolver and cache).
        budget: seconds an answer may wait for checks at most.
        tls: the certificate source; None serves plain HTTP (tests of the decision only).
    """

    def __init__(
        self, preflight: Preflight, budget: float, tls: TLSSource | None, bind: str, port: int
    ) -> None:
        self.preflight = preflight
        self.budget = budget
        self.tls = tls
        self.bind, self.port = bind, port
        self.context: ssl.SSLContext | None = None
        self._runner: web.AppRunner | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._injected = True
        self.answered = 0  # reviews answered (tests, benchmarks)

    async def start(self) -> None:
        """Load the certificate (raises when it cannot: the caller logs it) and listen."""
        if self.tls is not None:
            self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.context.minimum_version = ssl.TLSVersion.TLSv1_2
            self._injected = await self.tls.refresh(self.context)
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/validate", self._warn)
        app.router.add_post("/validate-deny", self._deny)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.bind, self.port, ssl_context=self.context, backlog=256)
        await site.start()
        if self.tls is not None:
            self._refresher = asyncio.create_task(self._refresh_loop())
        log.info("admission webhook on %s:%d (%s)", self.bind, self.port, "https" if self.tls else "http")

    async def stop(self) -> None:
        """Stop listening; in-flight answers are cut (the API server ignores the webhook)."""
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        if self._runner is not None:
            await self._runner.cleanup()
        self.preflight.cancel_pending()
        if self.tls is not None:
            self.tls.close()

    async def _refresh_loop(self) -> None:
        assert self.tls is not None and self.context is not None
        delay = REFRESH_SECONDS if self._injected else RETRY_SECONDS
        while True:
            await asyncio.sleep(delay)
            try:
                delay = REFRESH_SECONDS if await self.tls.refresh(self.context) else RETRY_SECONDS
            except Exception as exc:
                delay = RETRY_SECONDS
                log.warning(
                    "admission: cannot refresh the serving certificate: %s",
                    type(exc).__name__ + (f" (HTTP {exc.status})" if hasattr(exc, "status") else ""),
                )

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _warn(self, request: web.Request) -> web.Response:
        return await self._answer(request, deny_mode=False)

    async def _deny(self, request: web.Request) -> web.Response:
        return await self._answer(request, deny_mode=True)

    async def _answer(self, request: web.Request, *, deny_mode: bool) -> web.Response:
        started = time.monotonic()
        limit = api_timeout(request.query.get("timeout"))
        budget = self.budget if limit is None else max(min(self.budget, limit - MARGIN), 0.0)
        review: Mapping[str, Any] = {}
        try:
            body = await request.read()
            parsed = json.loads(body)
            review = parsed if isinstance(parsed, Mapping) else {}
            answer = await self.review(review, budget - (time.monotonic() - started), deny_mode=deny_mode)
        except Exception as exc:  # never block an apply we cannot judge
            log.warning("admission: answered allowed without checks: %s", type(exc).__name__)
            answer = decision.response(review, [])
        self.answered += 1
        return web.json_response(answer)

    async def review(
        self, review: Mapping[str, Any], budget: float, *, deny_mode: bool = False
    ) -> dict[str, Any]:
        """One AdmissionReview's answer (allowed with warnings; refused in deny mode)."""
        request = review.get("request")
        if not isinstance(request, Mapping):
            return decision.response(review, [])
        plan = decision.plan(request)
        if plan.skipped:
            return decision.response(review, [])
        results = await self.preflight.diagnose(plan, budget)
        warnings = [line for image, diag in results if (line := decision.warning(image, diag))]
        refused = (
            [
                line
                for image, diag in results
                if decision.denies(diag) and (line := decision.warning(image, diag))
            ]
            if deny_mode
            else []
        )
        if warnings:
            kind = str((request.get("kind") or {}).get("kind") or "")
            obj = request.get("object")
            meta = (obj.get("metadata") if isinstance(obj, Mapping) else None) or {}
            name = (
                str(meta.get("name") or meta.get("generateName") or "") if isinstance(meta, Mapping) else ""
            )
            log.info(
                "admission: %s %s/%s: %d warning(s)%s%s",
                kind,
                plan.namespace,
                name,
                len(warnings),
                " (dry run)" if request.get("dryRun") else "",
                ", refused" if refused else "",
            )
        return decision.response(review, warnings, refused)


def build(runtime: Runtime) -> AdmissionServer:
    """The webhook on the runtime's resolver, reads and pod cache, from its settings."""
    settings = runtime.settings
    reader = runtime.pod_reader if runtime.pod_reader is not None else runtime.kube
    mirror = runtime.pod_reader.nodes if runtime.pod_reader is not None else None
    preflight = Preflight(
        reader,
        runtime.env,
        runtime.pod_cache,
        runtime.pod_settings,
        platforms=lambda spec, default: watchcache.node_platforms(mirror, spec, default),
        on_request=metrics.count_probe_request,
    )
    generated = bool(settings.admission_tls_secret)
    tls = TLSSource(
        settings.admission_cert_dir,
        settings.admission_tls_secret,
        settings.admission_hosts or DEFAULT_HOSTS,
        settings.admission_webhook_name,
        certs.SecretStore(runtime.kube.api) if generated else None,
        certs.CaInjector(runtime.kube.api) if generated else None,
    )
    return AdmissionServer(
        preflight, settings.admission_budget, tls, settings.admission_bind_address, settings.admission_port
    )
