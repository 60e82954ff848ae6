#!/usr/bin/env python3
"""Checks the RoCEv2 frames of pcap/pcapng captures: ICRC, IPv4 header checksum, UDP
checksum (0 is allowed, as for RoCEv2), UDP length and BTH pad. tshark dissects RoCEv2 but
does not verify the ICRC; this does, independently of both implementations.

    roce_check.py FILE...

Prints one line per file:
    FILE: N frames, R RoCEv2, bad ICRC B, bad IP checksum I, bad UDP checksum U, bad length L
and, for up to 5 bad frames, their numbers and what is wrong. Exit 0 if none is bad and
every file has at least one RoCEv2 frame, 1 otherwise, 2 on an unreadable file.

The ICRC (IBA A16.4.1 for RoCEv2): CRC-32 over 8 bytes of 0xff (the LRH that RoCEv2 lacks),
the IPv4 header with TOS, TTL and header checksum set to all ones, the UDP header with the
checksum set to all ones, the BTH with its reserved byte 4 (FECN, BECN, resv6) set to all
ones, and the rest of the packet up to the ICRC, which is sent least significant byte first.
"""
import struct
import sys
import zlib


def frames(path):
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        return
    magic = struct.unpack_from("<I", data)[0]
    if magic == 0x0A0D0D0A:  # pcapng
        off = 0
        endian = "<"
        links = []
        while off + 12 <= len(data):
            btype = struct.unpack_from(endian + "I", data, off)[0]
            if btype == 0x0A0D0D0A:
                bom = data[off + 8:off + 12]
                endian = "<" if bom == b"\x4d\x3c\x2b\x1a" else ">"
                links = []
            blen = struct.unpack_from(endian + "I", data, off + 4)[0]
            if blen < 12 or off + blen > len(data):
                raise ValueError("truncated pcapng block at %d" % off)
            body = data[off + 8:off + blen - 4]
            if btype == 1:  # IDB
                links.append(struct.unpack_from(endian + "H", body, 0)[0])
            elif btype == 6:  # EPB
                ifid, _, _, caplen, _ = struct.unpack_from(endian + "IIIII", body, 0)
                yield links[ifid] if ifid < len(links) else 1, body[20:20 + caplen]
            elif btype == 3:  # SPB
                yield links[0] if links else 1, body[4:]
            off += blen
        return
    if magic in (0xA1B2C3D4, 0xA1B23C4D):
        endian = "<"
    elif magic in (0xD4C3B2A1, 0x4D3CB2A1):
        endian = ">"
    else:
        raise ValueError("neither pcap nor pcapng")
    link = struct.unpack_from(endian + "I", data, 20)[0] & 0x0FFFFFFF
    off = 24
    while off + 16 <= len(data):
        _, _, caplen, _ = struct.unpack_from(endian + "IIII", data, off)
        off += 16
        yield link, data[off:off + caplen]
        off += caplen


def csum16(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def check(path):
    n = roce = bad_icrc = bad_ip = bad_udp = bad_len = 0
    bad = []
    for link, fr in frames(path):
        n += 1
        if link != 1 or len(fr) < 14:
            continue
        et = struct.unpack_from("!H", fr, 12)[0]
        off = 14
        while et in (0x8100, 0x88A8) and len(fr) >= off + 4:
            et = struct.unpack_from("!H", fr, off + 2)[0]
            off += 4
        if et != 0x0800 or len(fr) < off + 20:
            continue
        ihl = (fr[off] & 0x0F) * 4
        if fr[off + 9] != 17 or len(fr) < off + ihl + 8:
            continue
        ip = fr[off:off + ihl]
        udp_off = off + ihl
        sport, dport, ulen, ucsum = struct.unpack_from("!HHHH", fr, udp_off)
        if dport != 4791:
            continue
        roce += 1
        why = []
        total = struct.unpack_from("!H", ip, 2)[0]
        if ulen < 8 + 12 + 4 or udp_off + ulen > len(fr) or total != ihl + ulen:
            bad_len += 1
            bad.append("frame %d: UDP length %d, IP total %d, captured %d" %
                       (n, ulen, total, len(fr) - off))
            continue
        if csum16(ip) != 0xFFFF:
            bad_ip += 1
            why.append("IPv4 header checksum")
        udp = fr[udp_off:udp_off + ulen]
        if ucsum != 0:
            pseudo = ip[12:20] + struct.pack("!BBH", 0, 17, ulen)
            if csum16(pseudo + udp) != 0xFFFF:
                bad_udp += 1
                why.append("UDP checksum 0x%04x" % ucsum)
        mip = bytearray(ip)
        mip[1] = 0xFF
        mip[8] = 0xFF
        mip[10:12] = b"\xff\xff"
        mudp = bytearray(udp[:8])
        mudp[6:8] = b"\xff\xff"
        bth = bytearray(udp[8:20])
        bth[4] = 0xFF
        crc = zlib.crc32(b"\xff" * 8 + bytes(mip) + bytes(mudp) + bytes(bth) + udp[20:-4])
        got = struct.unpack("<I", udp[-4:])[0]
        if crc != got:
            bad_icrc += 1
            why.append("ICRC 0x%08x, expected 0x%08x" % (got, crc))
        if why:
            bad.append("frame %d (opcode 0x%02x, %s:%d): %s" %
                       (n, udp[8], ".".join(map(str, ip[12:16])), sport, ", ".join(why)))
    print("%s: %d frames, %d RoCEv2, bad ICRC %d, bad IP checksum %d, bad UDP checksum %d, "
          "bad length %d" % (path, n, roce, bad_icrc, bad_ip, bad_udp, bad_len))
    for b in bad[:5]:
        print("  " + b)
    return roce > 0 and not bad


def main():
    ok = True
    for p in sys.argv[1:]:
        try:
            ok = check(p) and ok
        except (OSError, ValueError, struct.error) as e:
            print("%s: unreadable: %s" % (p, e))
            return 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
