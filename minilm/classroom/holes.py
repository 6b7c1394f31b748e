"""Cutting holes out of library source with ``ast``: the student's copy of a file.

A hole is a function or method named by its qualified name (``"softmax"``,
``"AdamW._update"``). Two kinds:

- ``"function"``: the whole body goes. What stays: decorators, the signature, the docstring,
  and the body's comments (the equations and shape comments the student works from). A
  trailing shape comment on a code line, ``m = x.max(-1)  # (..., 1)``, stays as a comment of
  its own naming the variable, ``# m: (..., 1)``. The body becomes
  ``raise NotImplementedError("...")`` naming what to implement.
- ``"region"``: only the lines between a ``# BEGIN SOLUTION`` and an ``# END SOLUTION``
  comment inside the function go (the otter-grader / nbgrader convention); the library runs
  unchanged with the markers in it, since they are comments.

The function is found by name in the syntax tree at the time the assignment is made, never
by line number, so the library file may change around it. Comments are read with
``tokenize``; only line spans come from the tree, and the file is rebuilt from its own lines.

Deliberately left out: holes in nested functions, and several regions in one function.
"""

from __future__ import annotations

import ast
import io
import textwrap
import tokenize

__all__ = ["BEGIN", "END", "HoleError", "cut", "find_function", "replace_function", "strip_markers"]

BEGIN = "# BEGIN SOLUTION"
END = "# END SOLUTION"


class HoleError(ValueError):
    """A hole that cannot be cut: the function is missing, or its markers are."""


def find_function(tree: ast.Module, qualname: str) -> ast.FunctionDef | ast.AsyncFunctionDef:
    """The ``def`` named ``qualname`` ("f" or "Class.method") at module or class level."""
    parts = qualname.split(".")
    body: list[ast.stmt] = tree.body
    node: ast.AST | None = None
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        kinds = (ast.FunctionDef, ast.AsyncFunctionDef) if last else (ast.ClassDef,)
        found = [n for n in body if isinstance(n, kinds) and n.name == part]
        if not found:
            raise HoleError(f"no {'function' if last else 'class'} {part!r} (of {qualname!r}) in the file")
        node = found[-1]  # the last definition wins, as when the module runs
        body = getattr(node, "body", [])
    assert isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    return node


def _comments(source: str) -> dict[int, tuple[int, str]]:
    """line number -> (column, text) of each comment in ``source``."""
    out: dict[int, tuple[int, str]] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = (tok.start[1], tok.string)
    return out


def _body_start(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[int, int]:
    """(index in fn.body, line) of the first statement after the docstring."""
    first = fn.body[0]
    has_doc = (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
               and isinstance(first.value.value, str))
    if has_doc and len(fn.body) > 1:
        return 1, fn.body[1].lineno
    if has_doc:
        return 1, first.end_lineno + 1  # only a docstring: nothing to cut
    return 0, first.lineno


def _target_name(stmt: ast.stmt) -> str | None:
    """The variable a simple assignment statement defines, for turning its shape comment."""
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
        t = stmt.targets[0]
    elif isinstance(stmt, (ast.AnnAssign, ast.AugAssign)):
        t = stmt.target
    else:
        return None
    try:
        return ast.unparse(t)
    except Exception:  # pragma: no cover
        return None


def _raise_line(indent: str, message: str) -> str:
    """``raise NotImplementedError("...")``, the message split over lines of ~90 columns."""
    one = f"{indent}raise NotImplementedError({message!r})\n"
    if len(one) <= 96:
        return one
    parts = textwrap.wrap(message, width=max(40, 86 - len(indent)), drop_whitespace=False)
    body = "".join(f"{indent}    {part!r}\n" for part in parts)
    return f"{indent}raise NotImplementedError(\n{body}{indent})\n"


def cut(source: str, qualname: str, kind: str = "function", message: str | None = None) -> str:
    """``source`` with the hole ``qualname`` cut out (see the module docstring).

    ``message``: what the ``NotImplementedError`` says; by default names the function.
    """
    tree = ast.parse(source)
    fn = find_function(tree, qualname)
    lines = source.splitlines(keepends=True)
    message = message or f"{qualname}: implement this"
    comments = _comments(source)
    if kind == "region":
        last = fn.end_lineno  # the tree ends at the last statement: take the comments after it too
        while last < len(lines) and (not lines[last].strip() or (
                last + 1 in comments and comments[last + 1][0] > fn.col_offset and not lines[last][: comments[last + 1][0]].strip())):
            last += 1
        begins = [n for n in range(fn.lineno, last + 1)
                  if n in comments and comments[n][1].strip().upper().startswith(BEGIN)]
        ends = [n for n in range(fn.lineno, last + 1)
                if n in comments and comments[n][1].strip().upper().startswith(END)]
        if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
            raise HoleError(f"{qualname}: a region hole needs one {BEGIN!r} and one {END!r} comment "
                            f"inside the function, in that order; found {len(begins)} and {len(ends)}")
        b, e = begins[0], ends[0]
        indent = lines[b - 1][: comments[b][0]]
        kept = [f"{indent}{comments[n][1]}\n" for n in range(b + 1, e)
                if n in comments and not lines[n - 1][: comments[n][0]].strip()]
        new = [lines[b - 1], *kept, _raise_line(indent, message), lines[e - 1]]
        return "".join(lines[: b - 1] + new + lines[e:])
    if kind != "function":
        raise HoleError(f"{qualname}: hole kind must be 'function' or 'region', got {kind!r}")
    i, start = _body_start(fn)
    end = fn.end_lineno
    indent = " " * (fn.body[0].col_offset)
    # statements by their first line, to name the variable of a trailing shape comment
    stmts = {s.lineno: s for s in ast.walk(fn) if isinstance(s, ast.stmt)}
    kept: list[str] = []
    for n in range(start, end + 1):
        if n not in comments:
            continue
        col, text = comments[n]
        before = lines[n - 1][:col]
        if not before.strip():  # a comment on a line of its own: keep it, at the body's indent
            kept.append(f"{indent}{text}\n")
        elif text.lstrip("# ").startswith("(") and n in stmts:  # a shape comment after code
            name = _target_name(stmts[n])
            if name:
                kept.append(f"{indent}# {name}: {text.lstrip('# ')}\n")
    new = kept + [_raise_line(indent, message)]
    tail = lines[end:]
    return "".join(lines[: start - 1] + new + tail)


def replace_function(source: str, qualname: str, new_def: str) -> str:
    """``source`` with the ``def`` of ``qualname`` (decorators included) replaced by ``new_def``.

    ``new_def`` is written at column 0; it is indented to the function's own level.
    """
    tree = ast.parse(source)
    fn = find_function(tree, qualname)
    lines = source.splitlines(keepends=True)
    first = min([fn.lineno] + [d.lineno for d in fn.decorator_list])
    indent = " " * fn.col_offset
    body = "".join(indent + ln if ln.strip() else ln for ln in new_def.strip("\n").splitlines(keepends=True))
    return "".join(lines[: first - 1]) + body + "\n" + "".join(lines[fn.end_lineno:])


def strip_markers(source: str) -> str:
    """``source`` without its ``# BEGIN SOLUTION`` / ``# END SOLUTION`` lines (the key's copy)."""
    comments = _comments(source)
    lines = source.splitlines(keepends=True)
    drop = {n for n, (col, text) in comments.items()
            if not lines[n - 1][:col].strip() and text.strip().upper().startswith((BEGIN, END))}
    return "".join(ln for n, ln in enumerate(lines, 1) if n not in drop)
