#!/usr/bin/env python3
"""Turns a DVERBS_PCAP capture of the e2e tests into rx_fuzz seed inputs.

    DVERBS_PCAP=/tmp/ops.pcapng build/tests/e2e/ops_test
    tests/fuzz/pcap_to_corpus.py /tmp/ops.pcapng tests/fuzz/corpus/rx [PER_OPCODE]

Each RoCEv2 frame becomes one raw-mode input (mode byte 0, see rx_input.h) named
pcap-<opcode>-<n>; at most PER_OPCODE frames (default 3) per BTH opcode and per frame size
class are kept, so the corpus holds every kind of valid traffic without thousands of near
duplicates. Frames keep their original ICRC.
"""
import os
import struct
import sys


def frames(path):
    data = open(path, 'rb').read()
    off = 0
    endian = '<'
    while off + 12 <= len(data):
        btype, blen = struct.unpack_from(endian + 'II', data, off)
        if btype == 0x0A0D0D0A:  # section header: byte order magic
            magic = struct.unpack_from('<I', data, off + 8)[0]
            endian = '<' if magic == 0x1A2B3C4D else '>'
            btype, blen = struct.unpack_from(endian + 'II', data, off)
        if blen < 12 or off + blen > len(data):
            break
        if btype == 6:  # enhanced packet block
            caplen = struct.unpack_from(endian + 'I', data, off + 20)[0]
            yield data[off + 28:off + 28 + caplen]
        off += blen


def opcode(frame):
    eth = 14
    if len(frame) >= 18 and frame[12:14] == b'\x81\x00':
        eth = 18
    if len(frame) < eth + 20 + 8 + 12 or frame[eth - 2:eth] != b'\x08\x00':
        return None
    ihl = (frame[eth] & 0xf) * 4
    udp = eth + ihl
    if frame[eth + 9] != 17 or struct.unpack_from('>H', frame, udp + 2)[0] != 4791:
        return None
    return frame[udp + 8]


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    src, out = sys.argv[1], sys.argv[2]
    per = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    kept = {}
    written = 0
    for f in frames(src):
        op = opcode(f)
        if op is None:
            continue
        key = (op, min(len(f) // 512, 8))
        n = kept.get(key, 0)
        if n >= per:
            continue
        kept[key] = n + 1
        name = os.path.join(out, 'pcap-%02x-%d-%d' % (op, len(f), n))
        with open(name, 'wb') as o:
            o.write(b'\x00' + f)
        written += 1
    print('%d inputs from %s' % (written, src))


if __name__ == '__main__':
    main()
