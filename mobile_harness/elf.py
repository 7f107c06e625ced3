"""Just enough ELF reading to deploy the runner: its architecture and its DT_NEEDED libraries.

Pure Python so it works for cross-built (aarch64) files on any host, without binutils."""

from __future__ import annotations

import struct
from pathlib import Path

MACHINES = {62: "x86_64", 183: "aarch64", 40: "arm", 3: "x86"}


def _header(data: bytes) -> tuple[str, int]:
    if data[:4] != b"\x7fELF":
        raise ValueError("not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise ValueError("only 64-bit little-endian ELF files are supported")
    machine = struct.unpack_from("<H", data, 18)[0]
    return MACHINES.get(machine, f"machine-{machine}"), machine


def elf_arch(path: str | Path) -> str:
    with open(path, "rb") as f:
        return _header(f.read(64))[0]


def elf_needed(path: str | Path) -> list[str]:
    """DT_NEEDED entries, in order."""
    data = Path(path).read_bytes()
    _header(data)
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    needed: list[str] = []
    for _name, sh_type, _flags, _addr, offset, size, link, _info, _align, entsize in sections:
        if sh_type != 6:  # SHT_DYNAMIC
            continue
        strtab_off = sections[link][4]
        for pos in range(offset, offset + size, entsize or 16):
            tag, val = struct.unpack_from("<qQ", data, pos)
            if tag == 0:
                break
            if tag == 1:  # DT_NEEDED
                end = data.index(b"\0", strtab_off + val)
                needed.append(data[strtab_off + val:end].decode())
    return needed
