"""Type stubs of the native module ``gridsim._core`` (built from ``rust_core/``)."""

import numpy as np
import numpy.typing as npt

__version__: str

def accumulate_weighted(
    acc: npt.NDArray[np.float64], update: npt.NDArray[np.float32], weight: float
) -> None:
    """``acc += weight * update`` in place; raises InvalidInputError on a length mismatch."""

def count_non_finite(update: npt.NDArray[np.float32]) -> int:
    """Number of NaN or infinite entries of ``update``."""

def sample_discrete_gaussian(
    sigma: float, size: int, seed: bytes | None = None, threads: int = 0
) -> npt.NDArray[np.int64]:
    """``size`` exact samples of N_Z(0, sigma^2) (Canonne-Kamath-Steinke), GIL released.

    ``seed`` (32 bytes) makes the output reproducible and independent of ``threads``;
    without it the seed comes from the OS. ``threads`` = 0 uses every core, 1 the calling
    thread. Raises InvalidInputError for sigma outside [2**-16, 2**40] (or not finite),
    a seed that is not 32 bytes, or more than 256 threads.
    """
