"""Releases and deletes from the web UI: the application's rules, with the UI's actor.

Route handlers run in the server's threads, so the blocking variant is called. The
rules themselves (two-person release, policy re-check of ``--to``, audit) are the
application's (``milter.app.release``), the same the CLI uses; this adapter only
builds what they need once per process (the signer, the outbound path).
"""

from __future__ import annotations

from collections.abc import Sequence

from milter.actions.rewrite import apply
from milter.app.outbound import Outbound
from milter.app.release import ReviewResult, review_delete, review_release_sync
from milter.app.wiring import load_signer
from milter.config import GatewayConfig
from milter.quarantine.store import QuarantineStore


class Actions:
    def __init__(self, config: GatewayConfig, store: QuarantineStore) -> None:
        self.config = config
        self.store = store
        self._outbound: Outbound | None = None

    def outbound(self) -> Outbound:
        if self._outbound is None:  # the DKIM key is read on the first release only
            self._outbound = Outbound(apply, load_signer(self.config))
        return self._outbound

    def release(self, qid: str, actor: str, reason: str, to: Sequence[str]) -> ReviewResult:
        return review_release_sync(
            self.config, self.store, self.outbound(), qid, actor=actor, reason=reason, to=to
        )

    def delete(self, qid: str, actor: str, reason: str) -> ReviewResult:
        return review_delete(self.store, qid, actor, reason)
