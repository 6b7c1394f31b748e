"""Helpers for the tutorial chapters in ``tutorials/`` (the book of minilm).

A chapter shows the library's code, it never copies it: ``show(minilm.numpy.softmax)``
renders the source of the function the chapter teaches, so there is one copy of every line.

Deliberately left out: anything a chapter computes; chapters call minilm itself.
"""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["show"]


def show(*objects: Any) -> None:
    """Display the source code of each function, class or module in ``objects``.

    In a notebook the code is rendered with syntax highlighting (``IPython.display.Code``);
    run as a plain script (``python tutorials/03_softmax.py``) it is printed.
    """
    for obj in objects:
        try:
            source = inspect.getsource(obj)
        except (TypeError, OSError) as e:
            raise ValueError(f"show() needs a function, class or module with source, got {obj!r}: {e}") from None
        if _in_notebook():
            from IPython.display import Code, display

            display(Code(source, language="python"))
        else:
            print(source)


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"
