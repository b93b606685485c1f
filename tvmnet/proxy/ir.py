"""LLVM IR parsing for the cost proxy: TVM's optimised LLVM IR of a kernel (text) read into
functions and their basic blocks (phis, instructions, terminators with their ``!prof`` branch
weights, the calls each block makes), with the operands of the integer instructions that the
block-count interpreter (``tvmnet.proxy.counts``) evaluates. An instruction of a form this
parser does not know is kept as an opaque one (no type, no operands).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

_LABEL = re.compile(r'^("?)([-\w$.]+)\1:(\s|$)')
_DEFINE = re.compile(r'^define\b.*?@("?)([-\w$.]+)\1\((.*)\).*\{\s*$')
_RESULT = re.compile(r'^\s+(%[-\w$.]+|%"[^"]+")\s*=\s*(.*)$')
_VALUE = r'(?:%[-\w$.]+|%"[^"]+"|-?\d+|true|false|poison|undef|null|zeroinitializer)'
_META = re.compile(r"^!(\d+)\s*=\s*(?:distinct\s+)?!\{(.*)\}\s*$")

_BINOPS = {"add", "sub", "mul", "shl", "lshr", "ashr", "and", "or", "xor", "udiv", "sdiv", "urem", "srem"}
_CASTS = {"trunc", "zext", "sext", "freeze"}
_FLAGS = {"nuw", "nsw", "exact", "disjoint", "nneg", "samesign"}
_INTRINSICS = ("smin", "smax", "umin", "umax", "abs")


@dataclass
class Inst:
    dst: Optional[str]
    op: str
    text: str  # the full instruction text, without trailing metadata
    ty: Optional[str] = None
    args: Tuple = ()  # parsed operands (values, and for casts/icmp extra fields)


@dataclass
class Block:
    name: str
    phis: List[Inst] = field(default_factory=list)
    insts: List[Inst] = field(default_factory=list)
    term: Optional[Inst] = None
    succs: List[str] = field(default_factory=list)
    line: int = 0  # index in the IR lines where the block's first non-phi line goes
    calls: List[str] = field(default_factory=list)


@dataclass
class Func:
    name: str
    params: List[str]
    blocks: Dict[str, Block]
    order: List[str]
    globals_loaded: Dict[str, str] = field(default_factory=dict)  # %x -> @G for ``%x = load ptr, ptr @G``
    ptr_params: List[str] = field(default_factory=list)


def _strip_meta(s: str) -> str:
    """An instruction without its trailing ``, !dbg !1, !prof !2`` attachments."""
    i = s.find(", !")
    return s[:i] if i >= 0 else s


def _split_top(s: str) -> List[str]:
    """Split at the commas outside <>, (), [] and {}."""
    out, depth, cur = [], 0, []
    for ch in s:
        if ch in "<([{":
            depth += 1
        elif ch in ">)]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if cur and "".join(cur).strip():
        out.append("".join(cur).strip())
    return out


def _take_type(s: str) -> Tuple[str, str]:
    """(leading type, the rest) of ``s``: ``<16 x i32> %x`` -> (``<16 x i32>``, ``%x``)."""
    s = s.strip()
    if s.startswith("<"):
        j = s.index(">") + 1
        return s[:j], s[j:].strip()
    parts = s.split(None, 1)
    return parts[0], (parts[1] if len(parts) > 1 else "")


def _tinfo(ty: Optional[str]) -> Optional[Tuple[Optional[int], int]]:
    """(lanes or None for a scalar, bit width) of an integer or pointer type; None otherwise."""
    if not ty:
        return None
    m = re.fullmatch(r"<\s*(\d+)\s+x\s+(i\d+|ptr)\s*>", ty.strip())
    if m:
        return int(m.group(1)), (64 if m.group(2) == "ptr" else int(m.group(2)[1:]))
    if re.fullmatch(r"i\d+", ty):
        return None, int(ty[1:])
    if ty == "ptr":
        return None, 64
    return None


def _int_width(ty: str) -> Optional[int]:
    return int(ty[1:]) if re.fullmatch(r"i\d+", ty or "") else None


def _operand(s: str) -> str:
    """The value of a ``type value`` operand (attributes dropped)."""
    ty, rest = _take_type(s)
    rest = rest.strip()
    return rest.split()[-1] if rest and not rest.startswith(("<", "splat")) else rest


def _parse_inst(text: str) -> Inst:
    m = _RESULT.match(text)
    dst, body = (m.group(1), m.group(2)) if m else (None, text.strip())
    body = _strip_meta(body)
    words = body.split()
    op = words[0] if words else ""
    if op in ("tail", "musttail", "notail"):
        op = words[1]
    inst = Inst(dst, op, body)
    rest = body.split(None, 1)[1] if len(words) > 1 else ""
    if op in ("tail", "musttail", "notail") or words[:1] in (["tail"], ["musttail"], ["notail"]):
        rest = body.split("call", 1)[1]
    while rest.split(None, 1)[:1] and rest.split(None, 1)[0] in _FLAGS:
        rest = rest.split(None, 1)[1]
    try:
        if op in _BINOPS:
            inst.ty, rest = _take_type(rest)
            inst.args = tuple(_split_top(rest)[:2])
        elif op == "icmp":
            pred, rest = rest.split(None, 1)
            ty, rest = _take_type(rest)
            a, b = _split_top(rest)[:2]
            info = _tinfo(ty)
            inst.ty = f"<{info[0]} x i1>" if info and info[0] else "i1"
            inst.args = (pred, ty, a, b)
        elif op in _CASTS or op in ("ptrtoint", "inttoptr"):
            src_ty, rest = _take_type(rest)
            if " to " in rest:
                val, dst_ty = rest.rsplit(" to ", 1)
            else:
                val, dst_ty = rest, src_ty
            inst.ty = dst_ty.strip()
            inst.args = (src_ty, val.strip())
        elif op == "select":
            parts = _split_top(rest)
            cty, c = _take_type(parts[0])
            vty, a = _take_type(parts[1])
            inst.ty = vty
            inst.args = (c.split()[-1], _operand(parts[1]), _operand(parts[2]))
        elif op == "phi":
            inst.ty, rest = _take_type(rest)
            inst.args = tuple(
                (v.strip(), p.strip()) for v, p in re.findall(r"\[\s*((?:<[^>]*>|[^,\]])+?),\s*(%[^\s\]]+)\s*\]", rest)
            )
        elif op == "insertelement":
            parts = _split_top(rest)
            inst.ty = _take_type(parts[0])[0]
            inst.args = (_operand(parts[0]), _operand(parts[1]), _operand(parts[2]))
        elif op == "extractelement":
            parts = _split_top(rest)
            vty = _take_type(parts[0])[0]
            info = _tinfo(vty)
            inst.ty = f"i{info[1]}" if info and vty.find("ptr") < 0 else None
            inst.args = (_operand(parts[0]), _operand(parts[1]), vty)
        elif op == "shufflevector":
            parts = _split_top(rest)
            mty, mask = _take_type(parts[2])
            info = _tinfo(mty)
            ety = re.search(r"x\s+(i\d+|ptr)", _take_type(parts[0])[0])
            if info and ety:
                inst.ty = f"<{info[0]} x {ety.group(1)}>"
            inst.args = (_operand(parts[0]), _operand(parts[1]), mask.strip(), _take_type(parts[0])[0])
        elif op == "call":
            m2 = re.search(r"@llvm\.(smin|smax|umin|umax|abs)\.(v\d+i\d+|i\d+)\((.*)\)", body)
            if m2:
                n = re.match(r"v(\d+)(i\d+)", m2.group(2))
                inst.ty = f"<{n.group(1)} x {n.group(2)}>" if n else m2.group(2)
                inst.op = m2.group(1)
                inst.args = tuple(_operand(x) for x in _split_top(m2.group(3)))
            else:  # a runtime call (workspace allocation, free, parallel launch): its status code
                m2 = re.search(r"\bcall\s+(?:\w+\s+)*?(i\d+|ptr)\s", body)
                inst.ty = m2.group(1) if m2 else None
        elif op == "load":
            inst.ty = _take_type(rest)[0].rstrip(",")
        elif op == "getelementptr":
            m2 = re.match(
                r"(?:(?:inbounds|nuw|nusw|inrange\(\S+\))\s+)*([^,]+),\s*ptr\s+([^,\s]+)((?:,\s*\S+\s+[^,\s]+)*)\s*$",
                rest,
            )
            if m2:
                idx = re.findall(r",\s*(\S+)\s+([^,\s]+)", m2.group(3))
                size = _type_size(m2.group(1).strip())
                if len(idx) == 1 and size and _int_width(idx[0][0]):
                    inst.ty = "ptr"
                    inst.args = (m2.group(2), idx[0][1], idx[0][0], size)
        elif op == "alloca":
            inst.ty = "ptr"
    except (ValueError, IndexError, AttributeError):  # a form this parser does not know: opaque
        inst.ty, inst.args = None, ()
    return inst


def _type_size(ty: str) -> Optional[int]:
    sizes = {"i8": 1, "i16": 2, "half": 2, "bfloat": 2, "i32": 4, "float": 4, "i64": 8, "double": 8, "ptr": 8}
    if ty in sizes:
        return sizes[ty]
    m = re.fullmatch(r"<\s*(\d+)\s+x\s+(\w+)\s*>", ty)
    if m and m.group(2) in sizes:
        return int(m.group(1)) * sizes[m.group(2)]
    return None


def parse_ir(ir_text: str):
    """Functions of an LLVM IR module (blocks, phis, terminators), the branch weights, and
    the IR's lines (for inserting markers)."""
    lines = ir_text.split("\n")
    meta = {}
    for line in lines:
        m = _META.match(line)
        if m and "branch_weights" in m.group(2):
            meta["!" + m.group(1)] = [int(w) for w in re.findall(r"i32 (\d+)", m.group(2))]
    funcs: Dict[str, Func] = {}
    i = 0
    while i < len(lines):
        m = _DEFINE.match(lines[i])
        if not m:
            i += 1
            continue
        fname = m.group(2)
        params = re.findall(r"(%[-\w$.]+)(?=\s*(?:,|$))", m.group(3))
        ptr_params = [
            p for p in params if re.search(r"(?:^|,)\s*ptr\b[^,]*" + re.escape(p) + r"(?=\s*(?:,|$))", m.group(3))
        ]
        blocks: Dict[str, Block] = {}
        order: List[str] = []
        loaded: Dict[str, str] = {}
        cur = None
        i += 1
        while i < len(lines) and not lines[i].startswith("}"):
            line = lines[i]
            lm = _LABEL.match(line)
            if lm:
                cur = Block("%" + lm.group(2), line=i + 1)
                blocks[cur.name] = cur
                order.append(cur.name)
                i += 1
                continue
            s = line.strip()
            if not s or s.startswith(";") or s.startswith("#dbg_"):
                i += 1
                continue
            if cur is None:  # an unnamed entry block
                cur = Block("%<entry>", line=i)
                blocks[cur.name] = cur
                order.append(cur.name)
            if s.startswith("switch "):
                while "]" not in line and i + 1 < len(lines):
                    i += 1
                    line += " " + lines[i].strip()
                s = line.strip()
            inst = _parse_inst(line)
            if inst.op == "phi":
                cur.phis.append(inst)
                cur.line = i + 1
            elif inst.op in ("br", "switch", "ret", "unreachable", "indirectbr", "resume"):
                prof = re.search(r"!prof (!\d+)", s)
                if inst.op == "br":
                    targets = re.findall(r"label (%[-\w$.]+|%\"[^\"]+\")", s)
                    cond = re.match(r"br i1 (\S+),", s)
                    inst.args = (cond.group(1) if cond else None, targets, meta.get(prof.group(1)) if prof else None)
                    cur.succs = targets
                elif inst.op == "switch":
                    sm = re.match(r"switch (\S+) (\S+), label (\S+) \[(.*)\]", s)
                    cases = re.findall(r"\S+ (-?\d+), label (%[-\w$.]+)", sm.group(4)) if sm else []
                    inst.args = (
                        sm.group(2) if sm else None,
                        sm.group(3) if sm else None,
                        [(int(v), t) for v, t in cases],
                    )
                    cur.succs = ([sm.group(3)] if sm else []) + [t for _, t in cases]
                cur.term = inst
            else:
                cur.insts.append(inst)
                if inst.op == "call" or " call " in f" {inst.text} ":
                    cur.calls.append(inst.text)
                elif inst.op == "load" and inst.dst:
                    g = re.match(r"load ptr, ptr (@[-\w$.]+)", inst.text)
                    if g:
                        loaded[inst.dst] = g.group(1)
            i += 1
        funcs[fname] = Func(fname, params, blocks, order, loaded, ptr_params)
        i += 1
    return funcs, lines
