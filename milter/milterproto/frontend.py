"""The milter front-end's side of the pipeline: a transaction in, the MTA's orders out.

The pipeline decides and acts exactly as for the SMTP proxy; what differs is who
delivers. Here the MTA in front (Postfix) keeps the message in its own queue, so the
pipeline leaves one group of upstream recipients to the MTA's copy (``Outcome.kept``)
and this module turns the outcome into milter replies:

- every recipient refused by policy: reject with the pipeline's bilingual 550 text;
- anything deferred or any internal trouble: tempfail with the 451 text (Postfix
  keeps the message and the client, or Postfix's queue, retries);
- otherwise accept, after modifications: recipients the gateway served itself (held
  durably, routed through sanapati and accepted there, refused with a DSN) are removed
  from the MTA's copy; header and body changes make the MTA's copy the one the policy
  prepared (rewrites, DKIM signature); when no recipient is left, the copy is
  discarded (the client still got 250, because everything is accounted for).
"""

from __future__ import annotations

from milter.app.pipeline import Outcome, Pipeline
from milter.config import GatewayConfig
from milter.envelope import Dsn, Envelope, new_id
from milter.milterproto.server import MilterServer
from milter.milterproto.types import MilterResult, MilterTransaction

Header = tuple[str, str]


def parse_headers(block: bytes) -> list[Header]:
    """(name, value) of each field of a header block; folded values keep their CRLF,
    the one space after the colon is dropped, as Postfix hands values to a milter."""
    out: list[Header] = []
    for line in block.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and out:
            last_name, last_value = out[-1]
            out[-1] = (last_name, last_value + "\r\n" + line.decode("utf-8", "surrogateescape"))
            continue
        raw_name, sep, raw_value = line.partition(b":")
        if not sep:
            continue
        text = raw_value.decode("utf-8", "surrogateescape")
        out.append(
            (raw_name.decode("ascii", "replace"), text[1:] if text.startswith(" ") else text)
        )
    return out


def split_message(content: bytes) -> tuple[bytes, bytes]:
    """The header block (without the blank line) and the body."""
    end = content.find(b"\r\n\r\n")
    if end < 0:
        return content, b""
    return content[:end], content[end + 4 :]


def header_changes(old: list[Header], new: list[Header], result: MilterResult) -> None:
    """Milter header edits that turn ``old`` into ``new``.

    Rewrites change headers in three ways only: a field prepended (the DKIM signature),
    appended (``add_header``), or changed or removed in place (``subject_prefix``,
    ``remove_header``). Occurrences are compared per name, in order, which is how the
    protocol addresses a header (name and 1-based index among its namesakes).
    """
    old_by: dict[str, list[str]] = {}
    spelled: dict[str, str] = {}  # each name as the MTA's copy first spells it
    for name, value in old:
        old_by.setdefault(name.lower(), []).append(value)
        spelled.setdefault(name.lower(), name)
    new_by: dict[str, list[tuple[int, str, str]]] = {}
    for pos, (name, value) in enumerate(new):
        new_by.setdefault(name.lower(), []).append((pos, name, value))
    # Fields in front of the first field whose name the MTA's copy already has (the
    # DKIM signature, prepended by signing) are inserted at the top; every other field
    # is compared with its namesakes in order, so a changed first header (a prefixed
    # Subject) is changed in place, not moved.
    first_old = next((i for i, (n, _) in enumerate(new) if n.lower() in old_by), len(new))
    inserts: list[tuple[int, str, str]] = []
    deletes: list[tuple[str, int]] = []
    for key in dict.fromkeys([*old_by, *new_by]):
        before = old_by.get(key, [])
        after = new_by.get(key, [])
        original_name = spelled.get(key)
        # A namesake prepended in front of the old ones shifts them by one.
        prepended = [a for a in after if a[0] < first_old]
        rest = [a for a in after if a[0] >= first_old]
        for pos, name, value in prepended:
            inserts.append((pos, name, value))
        for i, (_, name, value) in enumerate(rest):
            if i < len(before):
                if before[i] != value:
                    result.change_headers.append((original_name or name, i + 1, value))
            else:
                result.add_headers.append((name, value))
        for i in range(len(rest), len(before)):
            deletes.append((original_name or key, i + 1))
    # Highest index first: a deletion never shifts the index of one still to come.
    for name, index in sorted(deletes, key=lambda d: -d[1]):
        result.change_headers.append((name, index, ""))
    for pos, name, value in sorted(inserts):
        result.insert_headers.append((pos, name, value))


def to_result(outcome: Outcome, txn: MilterTransaction) -> MilterResult:
    """What the MTA is told to do with its copy."""
    reply = outcome.reply
    if reply.code >= 500:
        return MilterResult("reject", reply)
    if reply.code >= 400:
        return MilterResult("tempfail", reply)
    kept = outcome.kept
    if kept is None:
        return MilterResult("discard")
    result = MilterResult("accept")
    keep = set(kept.recipients)
    result.delete_rcpts = [r for r in dict.fromkeys(txn.rcpts) if r not in keep]
    result.add_rcpts = [b for b in kept.bcc if b not in keep]
    if kept.message is not txn.message:
        old_head, old_body = split_message(txn.message.content())
        new_head, new_body = split_message(kept.message.content())
        if new_body != old_body:
            result.replace_body = new_body
        if new_head != old_head:
            header_changes(parse_headers(old_head), parse_headers(new_head), result)
    return result


def dsn_of(txn: MilterTransaction) -> Dsn:
    """The client's DSN parameters; informational here, since the MTA in front keeps
    and reports on its own copy."""

    def value(args: list[str], key: str) -> str:
        prefix = key + "="
        return next((a[len(prefix) :] for a in args if a.upper().startswith(prefix)), "")

    return Dsn(
        ret=value(txn.mail_args, "RET"),
        envid=value(txn.mail_args, "ENVID"),
        notify={r: v for r in txn.rcpts if (v := value(txn.rcpt_args.get(r, []), "NOTIFY"))},
        orcpt={r: v for r in txn.rcpts if (v := value(txn.rcpt_args.get(r, []), "ORCPT"))},
    )


def envelope_of(txn: MilterTransaction) -> Envelope:
    macros = txn.macros
    return Envelope(
        mail_from=txn.mail_from,
        rcpt_tos=tuple(txn.rcpts),
        client_addr=txn.client_addr or macros.get("client_addr", ""),
        helo=txn.helo,
        smtputf8=txn.smtputf8,
        tls=bool(macros.get("tls_version")),
        esmtp=True,
        queue_id=new_id(),
        frontend="milter",
        client_name=txn.client_name or macros.get("client_name", ""),
        login=macros.get("auth_authen", ""),
        mta_queue_id=macros.get("i", ""),
        dsn=dsn_of(txn),
    )


class MilterHandler:
    """End of message: the pipeline decides and acts, the MTA is told the rest."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def __call__(self, txn: MilterTransaction) -> MilterResult:
        env = envelope_of(txn)
        outcome = await self.pipeline.process(env, txn.message, keep=True)
        result = to_result(outcome, txn)

        async def dropped() -> None:
            await self.pipeline.abandoned(env, outcome)

        result.dropped = dropped
        return result


def milter_server(config: GatewayConfig, pipeline: Pipeline) -> MilterServer:
    """The milter front-end of one process, over the process's pipeline."""
    m = config.milter
    return MilterServer(
        m.listen,
        MilterHandler(pipeline),
        max_message_size=config.max_message_size,
        spool_threshold=config.spool_threshold,
        spool_dir=config.spool_dir or None,
        timeout=m.timeout,
        progress_interval=m.progress_interval,
    )
