"""Two network namespaces made by the test itself, joined by one veth pair, for network-fault tests.

Addresses come from the loopback range (127.77.0.1/30 and .2/30, with ``route_localnet`` so the kernel routes
127/8 over the veth): nothing outside the two namespaces can reach them or be reached. The store side keeps a
loopback interface with 127.0.0.1/32 only (a /8 there would claim the peer's 127.77.0.2 as local). Faults are
applied with ``ip``/``tc`` inside the namespaces: link down (a partition), ``tbf`` (a slow link whose small
queue drops packets) and ``netem`` (loss, delay) where the kernel has it.

`NetnsPair.call` runs a function on a thread that has joined the store's namespace (setns): sockets it opens,
and processes it starts, live there. `NetnsPair` removes both namespaces (and so the veth) on exit, also after
a failure; `unavailable` says why they cannot be made here, for a skip.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
_CLONE_NEWNET = 0x40000000
STORE_IP, ACTOR_IP = "127.77.0.1", "127.77.0.2"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def _join(ns: str) -> None:
    """Thread initializer: move this thread into network namespace ``ns``."""
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if ctypes.CDLL("libc.so.6", use_errno=True).setns(fd, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {ns} failed")
    finally:
        os.close(fd)


class NetnsPair:
    """Namespaces ``<tag>s`` (store) and ``<tag>a`` (actor), veth ``<tag>vs`` <-> ``<tag>va``."""

    def __init__(self, tag: str | None = None):
        tag = tag or f"mf{os.getpid() % 100000}"
        self.store_ns, self.actor_ns = f"{tag}s", f"{tag}a"
        self.store_dev, self.actor_dev = f"{tag}vs", f"{tag}va"
        self._thread: ThreadPoolExecutor | None = None

    @staticmethod
    def unavailable() -> str | None:
        """Why namespaces cannot be made here (None: they can)."""
        if os.geteuid() != 0:
            return "network namespaces need root"
        if shutil.which("ip") is None or shutil.which("tc") is None:
            return "no ip/tc (Debian package iproute2)"
        probe = f"mfprobe{os.getpid() % 100000}"
        done = ip("netns", "add", probe, check=False)
        if done.returncode != 0:
            return f"ip netns add refused: {done.stderr.strip()}"
        ip("netns", "del", probe, check=False)
        return None

    def __enter__(self) -> NetnsPair:
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _create(self) -> None:
        for ns in (self.store_ns, self.actor_ns):
            ip("netns", "del", ns, check=False)  # a leftover of a killed run with the same pid
            ip("netns", "add", ns)
        # created inside the namespaces: the pair never appears in the machine's own namespace
        ip(
            "link",
            "add",
            self.store_dev,
            "netns",
            self.store_ns,
            "type",
            "veth",
            "peer",
            "name",
            self.actor_dev,
            "netns",
            self.actor_ns,
        )
        for ns, dev, addr in (
            (self.store_ns, self.store_dev, STORE_IP),
            (self.actor_ns, self.actor_dev, ACTOR_IP),
        ):
            for scope in ("all", dev):
                ip("netns", "exec", ns, "sysctl", "-qw", f"net.ipv4.conf.{scope}.route_localnet=1")
            ip("-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
        # the store's own loopback (its launcher checks readiness on 127.0.0.1), as a /32
        ip("-n", self.store_ns, "link", "set", "lo", "up")
        ip("-n", self.store_ns, "addr", "del", "127.0.0.1/8", "dev", "lo", check=False)
        ip("-n", self.store_ns, "addr", "add", "127.0.0.1/32", "dev", "lo")
        self._thread = ThreadPoolExecutor(
            1, thread_name_prefix=self.store_ns, initializer=_join, initargs=(self.store_ns,)
        )

    def call(self, fn: Callable[..., T], *args: object, **kw: object) -> T:
        """``fn(*args, **kw)`` on the thread inside the store's namespace."""
        assert self._thread is not None
        return self._thread.submit(fn, *args, **kw).result()

    # ------------------------------------------------------------------------------------------ faults

    def link(self, up: bool) -> None:
        """Partition (down) or heal (up) the store's end of the veth."""
        ip("-n", self.store_ns, "link", "set", self.store_dev, "up" if up else "down")

    def tc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``tc`` inside both namespaces on their veth end (``{dev}`` in ``args`` names it)."""
        done = None
        for ns, dev in ((self.store_ns, self.store_dev), (self.actor_ns, self.actor_dev)):
            done = subprocess.run(
                ["ip", "netns", "exec", ns, "tc", *(a.format(dev=dev) for a in args)],
                capture_output=True,
                text=True,
                timeout=30,
            )
            if check and done.returncode != 0:
                raise RuntimeError(f"tc {' '.join(args)} in {ns}: {done.stderr.strip()}")
        assert done is not None
        return done

    def dropped(self) -> int:
        """Packets the root qdiscs of both ends dropped."""
        total = 0
        for ns, dev in ((self.store_ns, self.store_dev), (self.actor_ns, self.actor_dev)):
            out = subprocess.run(
                ["ip", "netns", "exec", ns, "tc", "-s", "qdisc", "show", "dev", dev],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout
            for part in out.split("dropped ")[1:]:
                total += int(part.split(",")[0])
        return total

    def netem_missing(self) -> str | None:
        """Why netem cannot be used here (None: it can)."""
        done = self.tc("qdisc", "add", "dev", "{dev}", "root", "netem", "delay", "1ms", check=False)
        if done.returncode != 0:
            return f"this kernel has no netem qdisc (tc: {done.stderr.strip().splitlines()[0]})"
        self.tc("qdisc", "del", "dev", "{dev}", "root", check=False)
        return None

    def close(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None
        for ns in (self.store_ns, self.actor_ns):
            ip("netns", "del", ns, check=False)  # takes the veth with it
