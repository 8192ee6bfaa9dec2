"""Loading a state dict into a module, with an error that says what does not fit.

``load_state_dict`` raises a RuntimeError listing every key; a user who picked the wrong file
needs to hear which file, which model, and the first few differences instead.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from mlp_core.errors import ModelError

_SHOWN = 4
# BatchNorm fills in a missing counter itself when reading state dicts written before it
# existed (old torchvision weights lack it), so its absence is not a mismatch.
_FILLED_IN_BY_TORCH = ("num_batches_tracked",)


def load_state_dict_checked(
    module: nn.Module, state: Mapping[str, Tensor], *, source: str, target: str
) -> None:
    """Load ``state`` into ``module`` strictly; a mismatch is a ModelError naming both sides."""
    problems = state_dict_mismatches(module, state)
    if problems:
        raise ModelError(
            f"{source} does not fit {target}: {'; '.join(problems)}",
            hint="Use weights saved from the same model with the same arguments.",
        )
    module.load_state_dict(dict(state), strict=True)


def state_dict_mismatches(module: nn.Module, state: Mapping[str, Tensor]) -> list[str]:
    own = module.state_dict()
    missing = [key for key in own if key not in state and not key.endswith(_FILLED_IN_BY_TORCH)]
    unexpected = [key for key in state if key not in own]
    mismatched = [
        f"{key} is {list(state[key].shape)} in the file but {list(own[key].shape)} in the model"
        for key in state
        if key in own and state[key].shape != own[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s) ({_first(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) ({_first(unexpected)})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es) ({_first(mismatched)})")
    return problems


def _first(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return shown + (f", and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")
