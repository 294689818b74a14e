import os
import sys

# One OpenBLAS thread per process (numpy's BLAS; a user's setting is kept): the
# command's processes are one per core already, and OpenBLAS's idle threads spin
# (see gridsim.meter.training_pool.limit_blas_threads). Set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

try:
    from gridsim.cli import main
except KeyboardInterrupt:  # Ctrl-C as the command starts: no traceback
    print("gridsim: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
