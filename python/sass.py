"""The machine code of the built kernels, read: per kernel of the fatbin that build.rs embeds
(`OUT_DIR/dydiff.fatbin`), for one architecture (sm_90 unless told), its registers, shared
memory, stack and spills (`cuobjdump -res-usage`), its loops (backward branches of
`cuobjdump -sass`), and for its main loop — the smallest loop holding the most tensor-core MMAs
(HMMA), else the most fp32 arithmetic, else the largest innermost loop — the instruction mix, the instructions
per HMMA, and the integer-division sequences the compiler emitted (`I2F.U32.RP` … `MUFU.RCP` …
`F2I`: a division by a value known only at run time, ~20 instructions each; a `CALL` to a
division routine for 64-bit operands — not the float32 division's slow path).

    python3 python/sass.py [FATBIN] [--arch 90] [--kernel NAME ...] [--json OUT.json] [--markdown]

FATBIN defaults to the newest `target/*/build/dydiff-*/out/dydiff.fatbin` (build with
`--features cuda` and nvcc: docs/devices.md). The SASS readers (`cuobjdump`) are found beside
$NVCC (the CUDA toolchain holds them: docs/devices.md, “Building with CUDA”) or on PATH.
Standard library only.

What a static read cannot know, it does not claim: instructions are counted once per loop body
(an inner loop's body counts once, and is reported as such), and the issue cost of an
instruction is taken as one slot (the model in python/sass_model.py states its throughputs).
"""

import argparse
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Instruction classes by opcode (the part before the first dot).
CLASSES = {
    "tensor": {"HMMA", "IMMA", "HGMMA", "BMMA", "DMMA"},
    "fp32": {"FFMA", "FADD", "FMUL", "FMNMX", "FSETP", "FSEL", "FCHK", "FSET", "FMNMX3"},
    "int": {"IMAD", "IADD3", "IADD", "LEA", "LOP3", "SHF", "SHL", "SHR", "ISETP", "IMNMX", "SEL",
            "IABS", "POPC", "FLO", "BREV", "PRMT", "SGXT", "BMSK", "IDP", "VIADD",
            "VIMNMX", "IMUL", "ICMP", "ISCADD", "UIMAD", "UIADD3", "ULEA", "ULOP3", "USHF",
            "UISETP", "USEL", "UMOV", "UPRMT", "ULDC", "USGXT"},
    "convert": {"I2F", "F2I", "F2F", "I2I", "F2FP", "I2FP", "F2IP"},
    "sfu": {"MUFU"},
    "load_global": {"LDG", "LD", "LDGSTS", "LDGDEPBAR", "UTMALDG"},
    "load_shared": {"LDS", "LDSM", "LDL"},
    "store": {"STG", "STS", "ST", "STL", "RED", "ATOM", "ATOMG", "ATOMS"},
    "sync": {"BAR", "DEPBAR", "SYNCS", "WARPSYNC", "MEMBAR", "ERRBAR", "CCTL"},
    "control": {"BRA", "EXIT", "BSSY", "BSYNC", "CALL", "RET", "JMP", "BRX", "YIELD", "NOP", "WARPGROUP"},
}
CLASS_OF = {op: cls for cls, ops in CLASSES.items() for op in ops}

LINE = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
FUNC = re.compile(r"^\s+Function : (\S+)")
PRED = re.compile(r"^@!?U?P[T0-9]+\s+")
TARGET = re.compile(r"0x([0-9a-f]+)\s*$")


def tool(name):
    """A SASS reader: beside $NVCC, else on PATH."""
    nvcc = os.environ.get("NVCC")
    if nvcc:
        p = pathlib.Path(nvcc).parent / name
        if p.exists():
            return str(p)
    found = shutil.which(name)
    if not found:
        sys.exit(f"sass.py: {name} not found beside $NVCC or on PATH (it comes with the CUDA toolchain)")
    return found


def default_fatbin():
    found = sorted(ROOT.glob("target/**/build/dydiff-*/out/dydiff.fatbin"), key=lambda p: p.stat().st_mtime)
    if not found:
        sys.exit("sass.py: no target/*/build/dydiff-*/out/dydiff.fatbin: build with --features cuda and NVCC set")
    return found[-1]


def instructions(fatbin, arch):
    """{kernel: [(address, opcode with modifiers, operand text, predicated)]} of one architecture."""
    out = subprocess.run([tool("cuobjdump"), "-sass", "-arch", f"sm_{arch}", str(fatbin)],
                         check=True, capture_output=True, text=True).stdout
    kernels, cur = {}, None
    for line in out.splitlines():
        m = FUNC.match(line)
        if m:
            cur = kernels.setdefault(m.group(1), [])
            continue
        m = LINE.match(line)
        if m and cur is not None:
            text = m.group(2)
            predicated = bool(PRED.match(text))
            text = PRED.sub("", text)
            op, _, rest = text.partition(" ")
            cur.append((int(m.group(1), 16), op, rest.strip(), predicated))
    return kernels


def resources(fatbin, arch):
    """{kernel: {"registers", "shared", "stack", "local"}} from cuobjdump -res-usage."""
    out = subprocess.run([tool("cuobjdump"), "-res-usage", "-arch", f"sm_{arch}", str(fatbin)],
                         check=True, capture_output=True, text=True).stdout
    res, name = {}, None
    for line in out.splitlines():
        m = re.match(r"\s*Function (\S+):", line)
        if m:
            name = m.group(1)
            continue
        if name and "REG:" in line:
            found = dict(re.findall(r"(\w+):(\d+)", line))
            res[name] = dict(registers=int(found.get("REG", 0)), shared=int(found.get("SHARED", 0)),
                             stack=int(found.get("STACK", 0)), local=int(found.get("LOCAL", 0)))
            name = None
    return res


def opcode_class(op):
    base = op.split(".")[0]
    return CLASS_OF.get(base, "other")


def loops(code):
    """The loops of a kernel: (start index, end index) of every backward branch's range."""
    index = {addr: i for i, (addr, *_rest) in enumerate(code)}
    found = set()
    for i, (addr, op, rest, _p) in enumerate(code):
        if op.split(".")[0] != "BRA":
            continue
        m = TARGET.search(rest)
        # (a branch to itself is the padding nvcc puts after the last EXIT, not a loop)
        if m and int(m.group(1), 16) < addr and int(m.group(1), 16) in index:
            found.add((index[int(m.group(1), 16)], i))
    return sorted(found)


def divisions(body, code):
    """Integer-division sequences: run-time divisors (I2F … .RP feeding MUFU.RCP), and calls to
    a division routine (a callee, up to its RET, converting integers: I2F; the float32 division's
    slow path, which a `/` of floats calls, does not)."""
    rp = sum(1 for _a, op, _r, _p in body if op.startswith("I2F") and ".RP" in op)
    index = {addr: i for i, (addr, *_rest) in enumerate(code)}
    calls = 0
    for _a, op, rest, _p in body:
        m = TARGET.search(rest) if op.startswith("CALL") else None
        if not m or int(m.group(1), 16) not in index:
            continue
        callee = []
        for _a2, op2, _r2, _p2 in code[index[int(m.group(1), 16)]:]:
            if op2.startswith("RET"):
                break
            callee.append(op2)
        calls += any(op2.startswith("I2F") for op2 in callee)
    return rp, calls


def analyse(code):
    """The main loop's figures for one kernel's instructions."""
    ls = loops(code)
    def hmma(rng):
        return sum(1 for _a, op, _r, _p in code[rng[0]:rng[1] + 1] if opcode_class(op) == "tensor")
    def inner(rng):
        return [l for l in ls if l != rng and rng[0] <= l[0] and l[1] <= rng[1]]
    def fp32(rng):
        return sum(1 for _a, op, _r, _p in code[rng[0]:rng[1] + 1] if opcode_class(op) == "fp32")
    main = None
    if ls:
        # the smallest loop holding the most MMAs (without MMAs: the most fp32 arithmetic, else
        # the largest innermost loop)
        work = hmma if any(hmma(l) for l in ls) else fp32
        if any(work(l) for l in ls):
            main = max(ls, key=lambda l: (work(l), -(l[1] - l[0])))
        else:
            innermost = [l for l in ls if not inner(l)]
            main = max(innermost, key=lambda l: l[1] - l[0])
    total = {}
    for _a, op, _r, _p in code:
        total[opcode_class(op)] = total.get(opcode_class(op), 0) + 1
    result = dict(instructions=len(code), loops=len(ls), mix_kernel=total)
    if main is None:
        result.update(main_loop=None)
        return result
    body = code[main[0]:main[1] + 1]
    mix = {}
    for _a, op, _r, _p in body:
        mix[opcode_class(op)] = mix.get(opcode_class(op), 0) + 1
    ops = {}
    for _a, op, _r, _p in body:
        base = op.split(".")[0]
        ops[base] = ops.get(base, 0) + 1
    n_mma = mix.get("tensor", 0)
    rp, calls = divisions(body, code)
    result.update(main_loop=dict(
        start=f"{code[main[0]][0]:#06x}", end=f"{code[main[1]][0]:#06x}", instructions=len(body),
        hmma=n_mma, per_hmma=(len(body) / n_mma) if n_mma else None, inner_loops=len(inner(main)),
        mix=mix, top_opcodes=sorted(ops.items(), key=lambda kv: -kv[1])[:8],
        division_sequences=rp, division_calls=calls,
    ))
    return result


def read(fatbin=None, arch=90, kernels=None):
    """{kernel: figures} for the fatbin's machine code of `arch`."""
    fatbin = pathlib.Path(fatbin) if fatbin else default_fatbin()
    code = instructions(fatbin, arch)
    res = resources(fatbin, arch)
    out = {}
    for name in sorted(code):
        if kernels and name not in kernels:
            continue
        out[name] = dict(resources=res.get(name, {}), **analyse(code[name]))
    return fatbin, out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fatbin", nargs="?")
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--kernel", nargs="*")
    ap.add_argument("--json")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    fatbin, figures = read(args.fatbin, args.arch, args.kernel)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(figures, indent=1))
    sep = " | " if args.markdown else "  "
    head = ["kernel", "regs", "smem B", "stack B", "loops", "main loop instr", "HMMA", "instr/HMMA",
            "int", "fp32", "conv", "sfu", "ld global", "ld shared", "div seq"]
    print(f"# {fatbin} sm_{args.arch}")
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
    else:
        print(sep.join(f"{h:>10}" if i else f"{h:<30}" for i, h in enumerate(head)))
    for name, f in figures.items():
        r, m = f["resources"], f["main_loop"] or {}
        mix = m.get("mix", {})
        cells = [name, r.get("registers", "?"), r.get("shared", "?"), r.get("stack", "?"), f["loops"],
                 m.get("instructions", "—"), m.get("hmma", "—"),
                 f"{m['per_hmma']:.1f}" if m.get("per_hmma") else "—",
                 mix.get("int", 0), mix.get("fp32", 0), mix.get("convert", 0), mix.get("sfu", 0),
                 mix.get("load_global", 0), mix.get("load_shared", 0),
                 m.get("division_sequences", "—")]
        if args.markdown:
            print("| " + " | ".join(str(c) for c in cells) + " |")
        else:
            print(sep.join(f"{str(c):>10}" if i else f"{str(c):<30}" for i, c in enumerate(cells)))


if __name__ == "__main__":
    main()
