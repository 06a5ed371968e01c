"""The message as one way out receives it: the policy's rewrites, then the signature.

One place for the order (rewrite first, sign last, so the signature covers what is
sent) and for what a failure means, shared by delivery at the time of the message and
by a release from the quarantine days later, so a released message leaves exactly as it
would have left without the hold.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from milter import log, metrics
from milter.message import Message
from milter.policy.verdict import Rewrite

RewriteFn = Callable[[bytes, Sequence[Rewrite]], bytes]
Signer = Callable[[bytes, str], bytes]


@dataclass(frozen=True)
class Outbound:
    """The rewriter and the signer of one process (either may be absent)."""

    rewrite: RewriteFn | None = None
    sign: Signer | None = None

    def needed(self, rewrites: Sequence[Rewrite]) -> bool:
        """Whether ``prepare`` would change anything (else the received bytes go as they are)."""
        return bool(rewrites and self.rewrite is not None) or self.sign is not None

    def prepare(
        self, message: Message, rewrites: Sequence[Rewrite], mail_from: str, *, log_id: str = ""
    ) -> Message:
        """``message`` rewritten, then signed.

        A rewrite that fails raises (the caller defers or refuses: a message the policy
        wanted changed must not leave unchanged). A signature that fails is logged and
        counted and the message goes unsigned: a 451 would repeat forever, and unsigned
        mail still reaches its recipients.
        """
        content = message.content()
        rewritten = bool(rewrites and self.rewrite is not None)
        if rewritten and self.rewrite is not None:
            content = self.rewrite(content, rewrites)
        signed = content
        if self.sign is not None:
            try:
                signed = self.sign(content, mail_from)
            except Exception as exc:
                log.failure("dkim-failed", exc, logging.WARNING, id=log_id)
                metrics.DKIM_FAILURES.inc()
        if not rewritten:
            if signed is content:
                return message
            if signed.endswith(content):  # only a signature header was added in front
                return message.derived(signed[: len(signed) - len(content)])
        return Message.from_content(signed)
