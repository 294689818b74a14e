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
