"""A private, loopback-only Postfix instance for tests and benchmarks.

``PostfixLab`` writes a complete ``main.cf``/``master.cf`` into a fresh directory of
its own, runs ``postfix -c DIR start`` as root and stops it again, whatever happens
in between. Everything lives under that directory: configuration, queue, data
(``master.lock``) and the log (``maillog_file``, written by ``postlogd``), so any
number of instances can run side by side and none touches the machine's Postfix.

Recipes (``examples/postfix/*.main.cf`` / ``*.master.cf``) are applied as text:
``main.cf`` parameters are set or overridden by name, ``master.cf`` services are
added or replace the lab's service of the same name, and addresses and service
names are substituted first (see ``apply_ports``).
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

POSTFIX = "/usr/sbin/postfix"
POSTQUEUE = "/usr/sbin/postqueue"


def have_postfix() -> bool:
    return Path(POSTFIX).exists() and Path(POSTQUEUE).exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(what: str, test: Callable[[], bool], timeout: float,
               detail: Callable[[], str] = lambda: "") -> None:
    """Poll ``test`` until it holds; TimeoutError naming ``what`` (and ``detail()``)."""
    deadline = time.monotonic() + timeout
    while not test():
        if time.monotonic() > deadline:
            extra = detail()
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}"
                               + (f"\n{extra}" if extra else ""))
        time.sleep(0.05)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.2):
            return True
    except OSError:
        return False


# The lab's own master.cf: every service unchrooted (a chroot would need copies of
# /etc files under the queue directory), the SMTP server on 127.0.0.1 only, and
# postlogd so that maillog_file works without syslog.
MASTER_CF = """\
{smtpd_listen} inet n - n - - smtpd
pickup     unix  n - n 60    1 pickup
cleanup    unix  n - n -     0 cleanup
qmgr       unix  n - n 300   1 qmgr
tlsmgr     unix  - - n 1000? 1 tlsmgr
rewrite    unix  - - n -     - trivial-rewrite
bounce     unix  - - n -     0 bounce
defer      unix  - - n -     0 bounce
trace      unix  - - n -     0 bounce
verify     unix  - - n -     1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -     - proxymap
proxywrite unix  - - n -     1 proxymap
smtp       unix  - - n -     - smtp
relay      unix  - - n -     - smtp
showq      unix  n - n -     - showq
error      unix  - - n -     - error
retry      unix  - - n -     - error
discard    unix  - - n -     - discard
local      unix  - n n -     - local
virtual    unix  - n n -     - virtual
lmtp       unix  - - n -     - lmtp
anvil      unix  - - n -     1 anvil
scache     unix  - - n -     1 scache
postlog    unix-dgram n - n - 1 postlogd
"""


def parse_main_cf(text: str) -> dict[str, str]:
    """``name = value`` pairs of a main.cf text (comments and continuations handled)."""
    params: dict[str, str] = {}
    name: str | None = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace() and name is not None:
            params[name] += " " + line.strip()
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"not a main.cf line: {line!r}")
        name = key.strip()
        params[name] = value.strip()
    return params


def parse_master_cf(text: str) -> list[tuple[str, str]]:
    """(service key, full entry text) of each master.cf entry; the key is the service
    name and type, e.g. ``127.0.0.1:10025/inet``. Continuation lines belong to the
    entry above; comment lines are dropped."""
    entries: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace():
            if not entries:
                raise ValueError(f"continuation without a service: {line!r}")
            entries[-1][1].append(line.rstrip())
            continue
        fields = line.split()
        entries.append((f"{fields[0]}/{fields[1]}", [line.rstrip()]))
    return [(key, "\n".join(lines)) for key, lines in entries]


def apply_ports(text: str, ports: Mapping[str, int | str]) -> str:
    """Substitute addresses in a recipe. Each key appears literally in the text, as a
    whole word (``127.0.0.1:2525``, ``[127.0.0.1]:2525``, ``submission``); an int
    value replaces only the port of a ``...:port`` key, a string the whole key."""
    for key, value in ports.items():
        if isinstance(value, int) and ":" in key:
            replacement = f"{key.rsplit(':', 1)[0]}:{value}"
        else:
            replacement = str(value)
        text = re.sub(rf"(?<![\w./]){re.escape(key)}(?![\w:])", replacement, text)
    return text


class PostfixError(RuntimeError):
    pass


class PostfixLab:
    """One private Postfix instance; ``start()``, then ``stop()`` (always)."""

    def __init__(self, *, relay_port: int, base: Path | None = None, name: str = "lab",
                 main: Mapping[str, str] | None = None, master: str = "",
                 smtpd_port: int | None = None) -> None:
        # Postfix's unprivileged daemons open the data directory and the log by absolute
        # path as user postfix: every parent must be traversable, which pytest's 0700
        # tmp_path is not. The lab makes its own 0755 directory under /tmp.
        self.root = Path(tempfile.mkdtemp(prefix=f"pflab-{name}-", dir=base or "/tmp"))
        self.root.chmod(0o755)
        self.config_dir = self.root / "etc"
        self.queue_dir = self.root / "queue"
        self.data_dir = self.root / "data"
        self.log_path = self.root / "maillog"
        self.smtpd_port = smtpd_port or free_port()
        self.relay_port = relay_port
        self.main: dict[str, str] = self.default_main()
        self.master: dict[str, str] = dict(parse_master_cf(
            MASTER_CF.format(smtpd_listen=f"127.0.0.1:{self.smtpd_port}")))
        if main:
            self.main.update(main)
        if master:
            self.add_master(master)
        self.started = False
        self._master_pid: int | None = None

    def default_main(self) -> dict[str, str]:
        return {
            "compatibility_level": "3.6",
            "config_directory": str(self.config_dir),
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            # Where the package put Postfix; postfix-files (meta_directory) is only read.
            "command_directory": "/usr/sbin",
            "daemon_directory": "/usr/lib/postfix/sbin",
            "shlib_directory": "/usr/lib/postfix",
            "meta_directory": "/etc/postfix",
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "mx.lab.jakarta.go.id",
            "mydomain": "lab.jakarta.go.id",
            "myorigin": "$myhostname",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mydestination": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "mynetworks": "127.0.0.0/8",
            "relayhost": f"[127.0.0.1]:{self.relay_port}",
            "smtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            "maillog_file": str(self.log_path),
            # postfix(1) refuses a maillog_file outside these prefixes (default /var).
            "maillog_file_prefixes": str(self.root),
            "import_environment": "MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C",
            "biff": "no",
            "append_dot_mydomain": "no",
            # Tests want retries within seconds, not minutes.
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "smtp_connect_timeout": "5s",
            "in_flow_delay": "0",
            "delay_warning_time": "0",
            "message_size_limit": "62914560",
            "smtpd_banner": "$myhostname ESMTP lab",
        }

    # configuration -------------------------------------------------------------

    def set_main(self, text_or_params: str | Mapping[str, str],
                 ports: Mapping[str, int | str] | None = None) -> None:
        """Set or override main.cf parameters from a recipe text or a mapping."""
        if isinstance(text_or_params, str):
            params = parse_main_cf(apply_ports(text_or_params, ports or {}))
        else:
            params = dict(text_or_params)
        self.main.update(params)

    def add_master(self, text: str, ports: Mapping[str, int | str] | None = None) -> None:
        """Add master.cf services from a recipe text; one with the same name and type
        as a lab service replaces it."""
        for key, entry in parse_master_cf(apply_ports(text, ports or {})):
            self.master[key] = entry

    def write_config(self) -> None:
        self.config_dir.mkdir(exist_ok=True)
        self.queue_dir.mkdir(exist_ok=True)   # root's; postfix check makes its subdirectories
        self.data_dir.mkdir(exist_ok=True)
        # master.lock is created in data_directory with user postfix's rights.
        shutil.chown(self.data_dir, "postfix", "postfix")
        main = "".join(f"{k} = {v}\n" for k, v in self.main.items())
        (self.config_dir / "main.cf").write_text(main)
        (self.config_dir / "master.cf").write_text("\n".join(self.master.values()) + "\n")

    # running -------------------------------------------------------------------

    def run(self, *args: str, timeout: float = 60.0) -> str:
        """``postfix -c DIR ARGS``; raises PostfixError with its messages on failure.

        postfix(1) writes its diagnostics to stderr only when stderr is a terminal
        (otherwise to syslog/maillog_file), so it runs on a pseudo-terminal."""
        return self._run_tty([POSTFIX, "-c", str(self.config_dir), *args], timeout)

    def _run_tty(self, argv: list[str], timeout: float) -> str:
        master_fd, slave_fd = pty.openpty()
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave_fd,
                                    stderr=slave_fd, close_fds=True)
            os.close(slave_fd)
            slave_fd = -1
            chunks: list[bytes] = []
            while True:
                try:
                    data = os.read(master_fd, 4096)
                except OSError:   # EIO: the other side is closed
                    break
                if not data:
                    break
                chunks.append(data)
            rc = proc.wait(timeout)
        finally:
            if slave_fd >= 0:
                os.close(slave_fd)
            os.close(master_fd)
        out = b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")
        if rc != 0:
            raise PostfixError(f"{' '.join(argv)} exited {rc}:\n{out}\n{self.log()[-4000:]}")
        return out

    def start(self, timeout: float = 30.0) -> PostfixLab:
        self.write_config()
        self.run("check")
        self.started = True   # from here on stop() has something to do
        self.run("start")
        wait_until(f"Postfix smtpd on 127.0.0.1:{self.smtpd_port}",
                   lambda: port_open(self.smtpd_port), timeout, lambda: self.log()[-4000:])
        self._master_pid = self.master_pid()
        return self

    def wait_listening(self, port: int, timeout: float = 15.0) -> None:
        wait_until(f"port {port}", lambda: port_open(port), timeout, lambda: self.log()[-4000:])

    def master_pid(self) -> int | None:
        try:
            return int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _children(self, pid: int) -> list[int]:
        kids: list[int] = []
        for task in Path(f"/proc/{pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                kids += [int(k) for k in (task / "children").read_text().split()]
        return kids

    def stop(self, timeout: float = 20.0) -> None:
        """``postfix stop``, then kill whatever of this instance is left. Safe to call
        more than once."""
        if not self.started:
            return
        self.started = False
        pid = self.master_pid() or self._master_pid
        kids = self._children(pid) if pid else []
        with contextlib.suppress(PostfixError, subprocess.TimeoutExpired):
            self.run("stop", timeout=timeout)
        if pid:
            with contextlib.suppress(TimeoutError):
                wait_until("Postfix master to exit", lambda: not Path(f"/proc/{pid}").exists(),
                           timeout)
        for p in ([pid] if pid else []) + kids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, signal.SIGKILL)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    # observing -----------------------------------------------------------------

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern: str, timeout: float = 20.0, count: int = 1) -> list[str]:
        """Log lines matching the regular expression, once there are ``count`` of them."""
        rx = re.compile(pattern)

        def lines() -> list[str]:
            return [x for x in self.log().splitlines() if rx.search(x)]

        wait_until(f"{count} Postfix log line(s) matching {pattern!r}",
                   lambda: len(lines()) >= count, timeout, lambda: self.log()[-4000:])
        return lines()

    def queue(self) -> list[dict[str, object]]:
        """The queue as ``postqueue -j`` shows it, one object per message."""
        r = subprocess.run([POSTQUEUE, "-c", str(self.config_dir), "-j"],
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise PostfixError(f"postqueue -j: {r.stderr}")
        return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]

    def queue_empty(self) -> bool:
        return not self.queue()

    def wait_queue_empty(self, timeout: float = 30.0) -> None:
        wait_until("an empty Postfix queue", self.queue_empty, timeout,
                   lambda: json.dumps(self.queue(), indent=1))

    def flush(self) -> None:
        """Attempt delivery of everything queued now (``postqueue -f``)."""
        r = subprocess.run([POSTQUEUE, "-c", str(self.config_dir), "-f"],
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise PostfixError(f"postqueue -f: {r.stderr}")


@contextlib.contextmanager
def postfix_lab_factory() -> Iterator[Callable[..., PostfixLab]]:
    """Yields ``make(**kwargs) -> PostfixLab`` (not started); every lab made is
    stopped and removed on exit, also when the body raised."""
    labs: list[PostfixLab] = []

    def make(**kwargs: Any) -> PostfixLab:
        lab = PostfixLab(**kwargs)
        labs.append(lab)
        return lab

    try:
        yield make
    finally:
        for lab in labs:
            lab.cleanup()
