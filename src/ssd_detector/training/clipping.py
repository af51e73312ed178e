"""Clipping the gradient's global norm (the ``max_gradient_norm`` hyperparameter).

From scratch with Adam at a high rate, one batch in thousands can give a gradient hundreds of
times the usual (a norm of 1,100 where the others are near 3); Adam then moves the weights it
touches by about 30 times the rate over the next steps, and the network can collapse to its
starting loss. Scaling such a gradient down to the limit keeps its direction and removes the
jolt; below the limit nothing changes. As Adam divides by the gradient's running size, scaling
many updates alike (a limit below the first epoch's norms) changes their steps little.

The norm is that of the job's gradient, the one the optimizer applies: after the allreduce
across workers and devices, times the trainer's rescaling.
"""
from __future__ import annotations

from typing import Sequence

import mxnet as mx
from mxnet import gluon


def clip_global_norm(params: Sequence[gluon.Parameter], max_norm: float, factor: float) -> mx.nd.NDArray:
    """Scales every context's gradients of params so that factor * the global norm is at most
    max_norm; returns the norm before clipping (a 1-element NDArray on the first context), not
    read here, so the update is queued without waiting for it."""
    if max_norm <= 0:
        raise ValueError(f"max_norm {max_norm} must be > 0")
    trained = [p for p in params if p.grad_req != "null"]
    if not trained:
        raise ValueError("no parameter with a gradient to clip")
    first = [p.list_grad()[0] for p in trained]
    # Sum of squares per array, then over arrays: (1,) each -> (1,).
    norm = mx.nd.sqrt(mx.nd.add_n(*[mx.nd.sum(mx.nd.square(g)) for g in first])) * factor
    ratio = mx.nd.minimum(mx.nd.ones_like(norm), max_norm / (norm + 1e-12))  # (1,)
    ratios: dict[mx.Context, mx.nd.NDArray] = {}
    for param in trained:
        for grad in param.list_grad():
            if grad.context not in ratios:
                ratios[grad.context] = ratio.as_in_context(grad.context)
            grad[:] = mx.nd.broadcast_mul(grad, ratios[grad.context])
    return norm
