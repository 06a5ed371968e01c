"""The Sendmail/Postfix milter protocol (version 6) front-end.

Postfix (``smtpd_milters``) and Sendmail call a mail filter over this protocol
instead of relaying through it, so the gateway can judge a message while the
client is still connected to the MTA, without becoming a hop itself. The package
only speaks the protocol: ``codec`` turns packets into values and back without
I/O, ``assembly`` rebuilds the message in the gateway's wire form, and ``server``
runs the connections and calls one injected handler at end of message; the policy
lives behind that handler, as it does behind the SMTP proxy.
"""

from milter.milterproto.types import Handler, Macros, MilterResult, MilterTransaction

__all__ = ["Handler", "Macros", "MilterResult", "MilterTransaction"]
