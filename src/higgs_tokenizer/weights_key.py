"""What identifies a module's weights as they are now, cheaply enough to check on every
streaming step: programs that hold the weights (compiled steps, CUDA graphs) must not run
on after they change."""

from __future__ import annotations

import weakref

from torch import nn


class DecoderWeights:
    """Watches the weights of a module and its submodules: `key()` changes when one is
    replaced, moved, cast or modified in place, or a checkpoint is loaded into the module.

    Writes that leave no trace are not seen: through `.data`, and in place under inference
    mode on weights made under it (inference tensors keep no version counter), except by
    `load_state_dict`, which this counts.
    """

    def __init__(self, module: nn.Module):
        # Where each weight is, found once: walking the modules on every step would cost more
        # than the step's other checks together. A bias of None counts too.
        self._places = [(m, name) for m in module.modules() for name in m._parameters]
        self._module = weakref.ref(module)
        if module not in _LOADS:
            _LOADS[module] = 0
            module.register_load_state_dict_pre_hook(_count_load)  # a function of the module: picklable

    def key(self) -> tuple:
        weights = (module._parameters.get(name) for module, name in self._places)
        return _LOADS.get(self._module()), tuple(
            None if t is None else (t.data_ptr(), None if t.is_inference() else t._version, t.dtype, t.device)
            for t in weights
        )


# Checkpoints loaded into each watched module.
_LOADS: "weakref.WeakKeyDictionary[nn.Module, int]" = weakref.WeakKeyDictionary()


def _count_load(module: nn.Module, *load_state_dict_args) -> None:
    _LOADS[module] = _LOADS.get(module, 0) + 1
