"""What a plugin author needs to test a model or a benchmark against cirbench's contract.

    from cirbench.testing import check_encoder, check_task

Importing this package is cheap; the checks import torch only when they encode. (cirbench's own tiny
models and fake servers are test helpers in the repository's tests/helpers/, not part of the package.)
"""

from cirbench.testing.conformance import ConformanceError, check_encoder, check_task

__all__ = ["ConformanceError", "check_encoder", "check_task"]
