"""A fix applied before importing mlx-lm in the project's reference tools.

mlx-lm 0.32.2's QuantizedSwitchLinear passes `global_scale` (used by nvfp4 only) to
`mx.gather_qmm`, a keyword MLX 0.32.2 does not take, so every quantized MoE fails there. Affine
experts never set it: the keyword is dropped when it is None and refused otherwise.
"""

import mlx.core as mx

_gather_qmm = mx.gather_qmm


def _gather_qmm_without_global_scale(*args, global_scale=None, **kwargs):
    if global_scale is not None:
        raise NotImplementedError("global_scale needs an MLX newer than 0.32.2")
    return _gather_qmm(*args, **kwargs)


mx.gather_qmm = _gather_qmm_without_global_scale
