"""What a slice with ``@network`` must not reach: the host's own addresses (rtnetlink, no tools).

A granted slice reaches the outside through slirp4netns, whose sockets live in the host's
network namespace. slirp4netns's ``--disable-host-loopback`` stops its gateway alias
(10.0.2.2) from reaching the host's 127.0.0.1, but a connection to any other address the host
owns (its external IPs, a bridge's address) would still arrive at the host's listening
ports. So the launcher reads every address the host delivers locally (the ``local`` routing
table: each address of each interface, plus any local prefix), and the sandbox, while still
root in its own network namespace, installs a ``prohibit`` route for each: the slice's
``connect`` fails with EACCES before a packet leaves it, and a slice (no capability there)
cannot remove the routes.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator

Prefix = tuple[int, bytes, int]  # (address family, address bytes, prefix length)

NETLINK_ROUTE = 0
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLM_F_REPLACE, NLM_F_CREATE = 0x100, 0x400
NLMSG_ERROR, NLMSG_DONE = 2, 3
RT_TABLE_MAIN, RT_TABLE_LOCAL = 254, 255
RTPROT_STATIC = 4
RTN_LOCAL, RTN_PROHIBIT = 2, 8
RTA_DST, RTA_TABLE = 1, 15
_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_RTATTR = struct.Struct("=HH")

# Addresses that are not the host's but answer for it on clouds: instance metadata (AWS, GCP,
# Azure, OpenStack: 169.254.169.254, in the link-local range), Azure's WireServer, Alibaba's
# metadata, AWS's IPv6 metadata. Credentials live there; a pipeline step never needs them.
METADATA: tuple[Prefix, ...] = tuple(
    (socket.AF_INET6 if net.version == 6 else socket.AF_INET, net.network_address.packed, net.prefixlen)
    for net in map(
        ipaddress.ip_network, ("169.254.0.0/16", "168.63.129.16/32", "100.100.100.200/32", "fd00:ec2::254/128")
    )
)


def _align(length: int) -> int:
    return (length + 3) & ~3


def _attributes(data: bytes) -> dict[int, bytes]:
    found = {}
    offset = 0
    while offset + _RTATTR.size <= len(data):
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size:
            break
        found[kind] = data[offset + _RTATTR.size : offset + length]
        offset += _align(length)
    return found


def _messages(sock: socket.socket) -> Iterator[tuple[int, int, bytes]]:
    """(sequence, type, payload) of each message the kernel sends, in order."""
    while True:
        data = sock.recv(1 << 16)
        offset = 0
        while offset + _NLMSGHDR.size <= len(data):
            length, kind, _flags, sequence, _port = _NLMSGHDR.unpack_from(data, offset)
            if length < _NLMSGHDR.size:
                raise OSError(errno.EPROTO, "rtnetlink: malformed answer")
            yield sequence, kind, data[offset + _NLMSGHDR.size : offset + length]
            offset += _align(length)


def host_local_prefixes() -> tuple[Prefix, ...]:
    """Every prefix this network namespace delivers to itself (IPv4 and IPv6), sorted."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE) as sock:
        request = _RTMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0, 0, 0, 0, 0)
        header = _NLMSGHDR.pack(_NLMSGHDR.size + len(request), RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
        sock.sendall(header + request)
        found = set()
        for sequence, kind, body in _messages(sock):
            if sequence != 1:
                continue
            if kind == NLMSG_DONE:
                break
            if kind == NLMSG_ERROR:
                code = struct.unpack_from("=i", body)[0]
                raise OSError(-code, f"rtnetlink route dump: {os.strerror(-code)}")
            family, dst_len, _src, _tos, table, _proto, _scope, rtype, _flags = _RTMSG.unpack_from(body)
            attributes = _attributes(body[_RTMSG.size :])
            if RTA_TABLE in attributes:
                table = struct.unpack("=I", attributes[RTA_TABLE])[0]
            if table == RT_TABLE_LOCAL and rtype == RTN_LOCAL and RTA_DST in attributes:
                found.add((family, attributes[RTA_DST], dst_len))
    return tuple(sorted(found))


def prohibit(prefixes: tuple[Prefix, ...]) -> None:
    """A ``prohibit`` route in this network namespace's main table for each prefix (one round trip).

    Longer than any route the namespace gets later (slirp4netns's 10.0.2.0/24 and default
    route), so they win; the namespace's own loopback is unaffected (the local table is looked
    up first).
    """
    if not prefixes:
        return
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
    batch = bytearray()
    for sequence, (family, address, length) in enumerate(prefixes, start=1):
        attribute = _RTATTR.pack(_RTATTR.size + len(address), RTA_DST) + address
        body = _RTMSG.pack(family, length, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC, 0, RTN_PROHIBIT, 0) + attribute
        batch += _NLMSGHDR.pack(_NLMSGHDR.size + len(body), RTM_NEWROUTE, flags, sequence, 0) + body
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE) as sock:
        sock.sendall(bytes(batch))
        acked = 0
        for sequence, kind, body in _messages(sock):
            if kind != NLMSG_ERROR or not 1 <= sequence <= len(prefixes):
                continue
            acked += 1
            code = -struct.unpack_from("=i", body)[0]
            family, address, length = prefixes[sequence - 1]
            if code and not (code == errno.EAFNOSUPPORT and family == socket.AF_INET6):  # (a kernel without IPv6)
                where = f"{ipaddress.ip_address(address)}/{length}"
                raise OSError(code, f"cannot block {where} in the sandbox: {os.strerror(code)}")
            if acked == len(prefixes):
                return


RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE = 0x10, 0x40, 0x100, 0x400


class HostAddressWatch:
    """Tells whether the host's addresses (or routes) may have changed since last asked.

    Reading the local table costs ~0.1-0.6 ms; asking this costs one non-blocking recv. The
    kernel queues an event on this socket for every address or route change from the moment
    it is bound, so a reader that binds it first and re-reads after each "changed" misses none.
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        self.sock.setblocking(False)
        self.sock.bind((0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE))

    def changed(self) -> bool:
        seen = False
        while True:
            try:
                self.sock.recv(1 << 16)
                seen = True
            except BlockingIOError:
                return seen
            except OSError:  # ENOBUFS: events were dropped, so something changed
                seen = True

    def close(self) -> None:
        self.sock.close()
