"""The training pipeline: one module per stage, and the plumbing they share."""

import logging

# bitsandbytes warns at import, on every command (PEFT imports it), that the optional `kernels` package for a
# faster CPU 4-bit matmul is missing; its generic kernel works, and only QLoRA on a CPU would use either.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# Where the `kernels` package is installed, bitsandbytes' look-up of that kernel warns, offline, that it skips a
# publisher check for a kernel it then does not use.
logging.getLogger("kernels").setLevel(logging.ERROR)
