"""``milter init [--dir /etc/milter]``: a configuration directory to start from.

An installation from a wheel or the Debian package has no repository checkout to copy
an example from, so the package carries the templates (``milter.shipped``) and this
command writes them out: a commented ``gateway.yaml`` that names the shipped policy as
``shipped:se-79-2019`` (so package upgrades bring its fixes), an empty
``local-policy.yaml`` layered after it for the site's own rules, and, on request, DKIM
keys together with the ``dkim:`` entries that use them.

It never overwrites: an administrator's configuration is worth more than a template.
Files are readable by the service's group (``milter``) when it exists and the command
runs as root, because the gateway runs as that user and must read them, but no one
else may: the configuration can hold relay passwords, the keys sign for the domain.
"""

from __future__ import annotations

import argparse
import grp
import os
import re
import socket
import sys
from pathlib import Path
from string import Template
from typing import Any

from milter import shipped
from milter.actions.dkim import DkimError, keygen
from milter.commands import CommandError

DEFAULT_DIR = "/etc/milter"
DEFAULT_STATE_DIR = "/var/lib/milter"
SERVICE_GROUP = "milter"
CONFIG_NAME = "gateway.yaml"
LOCAL_POLICY_NAME = "local-policy.yaml"
DKIM_SUBDIR = "dkim"

# What may stand unquoted in the YAML the template becomes: a value outside these
# would change the document's structure rather than fill in a field.
_ADDRESS = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`|~-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9-]+)*$")
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/-]+$")


def _dkim_spec(value: str) -> tuple[str, str]:
    domain, sep, selector = value.partition(":")
    if not sep or not domain or not selector:
        raise argparse.ArgumentTypeError(f"expected DOMAIN:SELECTOR, got {value!r}")
    return domain.strip().lower().rstrip("."), selector.strip()


def register(sub: Any) -> None:
    p = sub.add_parser(
        "init",
        help="write a commented gateway.yaml, a local policy and (on request) DKIM keys",
        description=(
            "Write DIR/gateway.yaml (commented; the shipped SE 79/SE/2019 policy plus "
            "DIR/local-policy.yaml) and, for each --dkim, a signing key under DIR/dkim. "
            "Existing files are never overwritten."
        ),
    )
    p.add_argument("--dir", default=DEFAULT_DIR, help=f"where to write (default {DEFAULT_DIR})")
    p.add_argument(
        "--hostname", help="the gateway's name in greetings and Received (default: this host)"
    )
    p.add_argument(
        "--state-dir",
        default=DEFAULT_STATE_DIR,
        help=f"quarantine database and spool (default {DEFAULT_STATE_DIR})",
    )
    p.add_argument(
        "--postmaster",
        default="postmaster@jakarta.go.id",
        help="sender of notices (default postmaster@jakarta.go.id)",
    )
    p.add_argument(
        "--officer",
        action="append",
        default=None,
        metavar="ADDRESS",
        help="compliance officer told about holds (repeat; default kepatuhan@jakarta.go.id)",
    )
    p.add_argument(
        "--dkim",
        action="append",
        default=[],
        type=_dkim_spec,
        metavar="DOMAIN:SELECTOR",
        help="generate a signing key and sign with it (repeat for more domains)",
    )
    p.add_argument(
        "--workers", type=int, default=None, help="gateway processes (default: one per core)"
    )
    p.set_defaults(func=init)


def render(
    *,
    hostname: str,
    state_dir: str,
    postmaster: str,
    officers: list[str],
    dkim: list[tuple[str, str, str]],
    workers: int,
) -> str:
    """The text of ``gateway.yaml``; ``dkim`` holds (domain, selector, key file) triples.

    Values are checked against what may stand unquoted in YAML, so a value can fill a
    field but never add a key (a hostname ending in ``\\nupstream: ...`` would)."""
    if not _HOSTNAME.match(hostname):
        raise CommandError(f"not a host name: {hostname!r}")
    if not _SAFE_PATH.match(state_dir):
        raise CommandError(
            f"--state-dir must be an absolute path of plain characters: {state_dir!r}"
        )
    for address in [postmaster, *officers]:
        if not _ADDRESS.match(address):
            raise CommandError(f"not a mail address: {address!r}")
    if workers < 1:
        raise CommandError("--workers must be at least 1")
    if dkim:
        lines = ["# Signs what leaves, after every rewrite. Publish each key's TXT record"]
        lines.append("# (`milter init` printed them; `milter dkim keygen` adds keys).")
        lines.append("dkim:")
        lines.extend(f"  - {{domain: {d}, selector: {s}, key_file: {k}}}" for d, s, k in dkim)
        block = "\n".join(lines)
    else:
        block = (
            "# DKIM signing, after every rewrite: `milter dkim keygen --domain D --selector S\n"
            "# --dir dkim` (or `milter init --dkim D:S` on a fresh directory), then:\n"
            "# dkim: [{domain: jakarta.go.id, selector: gw1, key_file: dkim/gw1.jakarta.go.id.pem}]"
        )
    return Template(shipped.template("gateway.yaml.in")).substitute(
        hostname=hostname,
        state_dir=state_dir.rstrip("/"),
        postmaster=postmaster,
        officers=", ".join(officers),
        dkim=block,
        workers=workers,
    )


def _default_hostname() -> str:
    """This host's name as the greeting should carry it; a machine whose name is unset
    or odd (a fresh container) still gets a configuration that loads."""
    for name in (socket.getfqdn(), socket.gethostname()):
        if _HOSTNAME.match(name):
            return name
    return "localhost"


def _service_gid() -> int | None:
    """The group the gateway runs as, when files should be handed to it: only root can
    give a file to another group, and only a packaged install has the group."""
    if os.geteuid() != 0:
        return None
    try:
        return grp.getgrnam(SERVICE_GROUP).gr_gid
    except KeyError:
        return None


def _share(path: Path, gid: int | None, mode: int) -> None:
    """Give ``path`` to the service group with ``mode``; without that group it stays
    private to its owner (the group bits of ``mode`` dropped)."""
    if gid is None:
        os.chmod(path, mode & 0o700)
        return
    os.chown(path, -1, gid)
    os.chmod(path, mode)


def _write_new(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def init(args: argparse.Namespace) -> int:
    folder = Path(args.dir).absolute()
    config = folder / CONFIG_NAME
    local = folder / LOCAL_POLICY_NAME
    existing = [str(p) for p in (config, local) if p.exists()]
    if existing:
        raise CommandError(f"{', '.join(existing)} exists; not overwriting it")
    keys = [(d, s, folder / DKIM_SUBDIR / f"{s}.{d}.pem") for d, s in args.dkim]
    taken = [str(k) for _, _, k in keys if k.exists()]
    if taken:
        raise CommandError(f"{', '.join(taken)} exists; not overwriting it")
    # Rendered before anything is written, so a bad value leaves no half-made directory.
    text = render(
        hostname=args.hostname or _default_hostname(),
        state_dir=args.state_dir,
        postmaster=args.postmaster,
        officers=args.officer or ["kepatuhan@jakarta.go.id"],
        dkim=[(d, s, f"{DKIM_SUBDIR}/{k.name}") for d, s, k in keys],
        workers=args.workers or os.cpu_count() or 1,
    )
    gid = _service_gid()
    created = not folder.exists()
    try:
        folder.mkdir(mode=0o750, parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandError(f"{folder}: {exc.strerror}") from None
    if created:
        _share(folder, gid, 0o750)
    records = []
    for domain, selector, _ in keys:
        try:
            key_file, record = keygen(domain, selector, folder / DKIM_SUBDIR)
        except DkimError as exc:
            raise CommandError(str(exc)) from None
        _share(Path(key_file), gid, 0o640)
        records.append(record)
    if keys:
        _share(folder / DKIM_SUBDIR, gid, 0o750)
    _write_new(local, shipped.template(LOCAL_POLICY_NAME))
    _write_new(config, text)
    for written in (local, config):
        _share(written, gid, 0o640)
    print(f"wrote {config} and {local}", file=sys.stderr)
    if records:
        print("publish these DNS records before signing starts:", file=sys.stderr)
        for record in records:
            print(record)
    print(f"next: edit {config}, then `milter -c {config} config check`", file=sys.stderr)
    return 0
