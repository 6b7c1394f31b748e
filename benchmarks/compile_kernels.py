"""Compile the flash-attention kernels for sm_80 and sm_90 without a GPU; print registers,
spills, shared memory and wgmma use; exit non-zero on a compile failure or a spill.

A thin wrapper around ``minilm.kernels.compile`` (``minilm bench compile`` calls the same).

    python benchmarks/compile_kernels.py --arch 80,90 --head-dims 64,128 --dtypes fp16 --quick
"""

import sys

from minilm.kernels.compile import main

if __name__ == "__main__":
    sys.exit(main())
