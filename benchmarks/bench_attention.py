"""Every attention implementation timed side by side, on a CPU or a CUDA GPU.

A thin wrapper: the code is ``minilm.attention_bench`` (so that ``minilm bench attention``
reaches it from an installed package); see its docstring and ``benchmarks/README.md``.

    python benchmarks/bench_attention.py --quick
    python benchmarks/bench_attention.py compare A.json B.json   # = minilm bench compare
"""

import sys

from minilm.attention_bench import compare_main, main

if __name__ == "__main__":
    if sys.argv[1:2] == ["compare"]:
        sys.exit(compare_main(sys.argv[2:], prog="bench_attention.py compare"))
    sys.exit(main(sys.argv[1:]))
