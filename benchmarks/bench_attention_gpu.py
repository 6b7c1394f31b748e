"""Our Triton flash attention vs torch's scaled_dot_product_attention, TFLOP/s on a CUDA GPU.

A thin wrapper: the code is ``minilm.kernels.bench`` (so that ``minilm bench attention``
reaches it from an installed package). Needs a CUDA GPU; on a CPU it says so and exits 0.

    python benchmarks/bench_attention_gpu.py --help
"""

import sys

from minilm.kernels.bench import main

if __name__ == "__main__":
    sys.exit(main())
