"""Everything a process needs besides its event loop, loaded and checked up front.

Every entry point (``serve`` with its SMTP and milter front-ends, ``config check``,
the quarantine release, the review UI) builds the same components here, so a mistake in
the configuration, the policy, the notice templates or the keys is found the same way
everywhere, as one line, before a socket is bound or a message is touched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from milter import log, metrics
from milter.app.pipeline import Inspector, Pipeline
from milter.config import GatewayConfig
from milter.delivery import Deliverer
from milter.errors import UserError
from milter.policy.engine import Policy, PolicyError
from milter.quarantine.store import QuarantineError, QuarantineStore, open_store


class SetupError(UserError):
    """The configuration cannot be put to work (one line, exit 1)."""


Signer = Callable[[bytes, str], bytes]


@dataclass
class Components:
    """The loaded policy, the open quarantine and the DKIM signer of one process."""

    policy: Policy | None = None
    store: QuarantineStore | None = None
    sign: Signer | None = None

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None


def load_policy(config: GatewayConfig) -> Policy:
    """The configured policy files, layered; the first error as one line."""
    try:
        return Policy.load(config.policy, routes=set(config.routes))
    except PolicyError as exc:
        more = f" (and {len(exc.errors) - 1} more)" if len(exc.errors) > 1 else ""
        raise SetupError(str(exc).splitlines()[0] + more) from None


def open_quarantine(config: GatewayConfig) -> QuarantineStore:
    try:
        return open_store(config.quarantine)
    except (QuarantineError, OSError) as exc:
        raise SetupError(f"quarantine: {exc}") from None


def load_signer(config: GatewayConfig) -> Signer | None:
    if not config.dkim:
        return None
    from milter.actions.dkim import DkimError, signer

    try:
        return signer(config.dkim)
    except DkimError as exc:
        raise SetupError(f"dkim: {exc}") from None


def build_components(config: GatewayConfig) -> Components:
    """Load the policy, open the quarantine, read the keys and notice templates."""
    out = Components()
    if config.policy:
        from milter.actions.notices import NoticeError, Templates

        out.policy = load_policy(config)
        try:
            Templates.load(config.notices.templates)
        except NoticeError as exc:
            raise SetupError(f"notices: {exc}") from None
        out.store = open_quarantine(config)
    try:
        out.sign = load_signer(config)
    except SetupError:
        out.close()
        raise
    return out


def inspector_for(policy: Policy, config: GatewayConfig) -> Inspector:
    """The inspector, reading labels with the policy's own levels and aliases."""
    from milter.inspect import inspect_message

    return partial(inspect_message, scheme=policy.scheme, limits=config.inspect)


def make_pipeline(config: GatewayConfig, components: Components) -> Pipeline:
    from milter.actions.rewrite import apply

    deliverer = Deliverer(config)
    pipeline = Pipeline(config, deliverer, rewrite=apply, sign=components.sign)
    if components.policy is not None:
        from milter.app.notify import GatewayNotifier

        pipeline.policy = components.policy
        pipeline.inspector = inspector_for(components.policy, config)
        limits = config.inspect
        if limits.processes > 0:
            from milter.app.inspection import InspectionPool

            # The inspector's own budget ends the scan cooperatively; this one kills a
            # process that did not get there. OCR has its own processes and budget.
            pipeline.inspection = InspectionPool(
                pipeline.inspector,
                size=limits.processes,
                budget=limits.time_budget + max(1.0, limits.time_budget / 2),
                ocr_budget=limits.ocr.time_budget if limits.ocr.enabled else 0.0,
                ocr_processes=limits.ocr.processes,
            )
        pipeline.store = components.store
        pipeline.notifier = GatewayNotifier(
            config, components.policy, deliverer, store=components.store
        )
    return pipeline


def reload_policy(config: GatewayConfig, pipeline: Pipeline) -> None:
    """SIGHUP: a bad policy leaves the running one in place, logged and counted."""
    if not config.policy:
        return
    try:
        policy = Policy.load(config.policy, routes=set(config.routes))
    except PolicyError as exc:
        metrics.POLICY_RELOADS.labels("error").inc()
        log.event("policy-reload-failed", 40, errors=str(exc).splitlines())
        return
    pipeline.use_policy(policy, inspector_for(policy, config))
    metrics.POLICY_RELOADS.labels("ok").inc()
    log.event("policy-reloaded", files=list(config.policy))
