"""Pure loss functions on time-major tensors (no nn.Module state, no env or runtime imports)."""

from distrl.losses.pg import (
    action_log_probs,
    baseline_loss,
    clipped_surrogate_loss,
    entropy,
    entropy_loss,
    kl_categorical,
    kl_loss,
    policy_gradient_loss,
    trust_region_mask,
)
from distrl.losses.reconstruction import reconstruction_loss
from distrl.losses.vtrace import (
    VTraceFromLogitsOut,
    VTraceOut,
    VTraceStreamsOut,
    vtrace_from_logits,
    vtrace_streams,
    vtrace_targets,
)

__all__ = [
    "VTraceFromLogitsOut",
    "VTraceOut",
    "VTraceStreamsOut",
    "action_log_probs",
    "baseline_loss",
    "clipped_surrogate_loss",
    "entropy",
    "entropy_loss",
    "kl_categorical",
    "kl_loss",
    "policy_gradient_loss",
    "reconstruction_loss",
    "trust_region_mask",
    "vtrace_from_logits",
    "vtrace_streams",
    "vtrace_targets",
]
