"""What identifies a module's weights as they are now, cheaply enough to check on every
streaming step: what is made from the weights (the eager step's layers, compiled steps,
CUDA graphs) must not be used after they change."""

from __future__ import annotations

import weakref

from torch import nn
from torch.nn.modules.module import register_module_module_registration_hook


class DecoderWeights:
    """Watches the weights of a module and its submodules: `key()` changes when one is
    replaced, moved, cast or modified in place, when a submodule is replaced, or when a
    checkpoint is loaded into the module.

    Writes that leave no trace are not seen: through `.data`, and in place under inference
    mode on weights made under it (inference tensors keep no version counter), except by
    `load_state_dict` on the module, which this counts.
    """

    def __init__(self, module: nn.Module):
        self._module = weakref.ref(module)
        self._places: list[tuple[nn.Module, str]] = []
        self._found_at: int | None = None  # the module's count of changes when the places were found

    def key(self) -> tuple:
        module = self._module()
        changes = _watched(module)
        if changes != self._found_at:
            # Where each weight is, found again only after a change: walking the modules on
            # every step would cost more than the step's other checks together. A bias of None
            # counts too.
            self._places = [(m, name) for m in module.modules() for name in m._parameters]
            self._found_at = changes
        weights = (owner._parameters.get(name) for owner, name in self._places)
        return changes, tuple(
            None if t is None else (t.data_ptr(), None if t.is_inference() else t._version, t.dtype, t.device)
            for t in weights
        )


# Each watched module's count of changes its weights' versions do not show: checkpoints
# loaded into it, submodules replaced anywhere under it.
_CHANGES: "weakref.WeakKeyDictionary[nn.Module, int]" = weakref.WeakKeyDictionary()
# Every module under a watched one: the watched modules it is under.
_UNDER: "weakref.WeakKeyDictionary[nn.Module, weakref.WeakSet]" = weakref.WeakKeyDictionary()


def _watched(root: nn.Module) -> int:
    """The count of `root`'s changes, watching it (and what is under it now) from the first call."""
    changes = _CHANGES.get(root)
    if changes is None:
        changes = _CHANGES[root] = 0
        root.register_load_state_dict_pre_hook(_count_load)  # a function of the module: picklable
        _watch_under(root)
    return changes


def _watch_under(root: nn.Module, modules: nn.Module | None = None) -> None:
    """Count what happens under `modules` (default: all of `root`) as changes of `root`."""
    for module in (root if modules is None else modules).modules():
        _UNDER.setdefault(module, weakref.WeakSet()).add(root)


def _count_load(module: nn.Module, *load_state_dict_args) -> None:
    _CHANGES[module] = _CHANGES.get(module, 0) + 1


def _count_new_submodule(parent: nn.Module, name: str, submodule: nn.Module) -> None:
    """Every module registration in the process comes here (a global hook): one lookup."""
    try:
        roots = _UNDER.get(parent)
    except TypeError:  # a module without a hash or weak references: never watched
        return
    if roots:
        for root in list(roots):
            _CHANGES[root] = _CHANGES.get(root, 0) + 1
            if submodule is not None:  # called before it is set: watched on its own
                _watch_under(root, submodule)


register_module_module_registration_hook(_count_new_submodule)
