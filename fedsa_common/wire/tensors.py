"""``Tensors``: parameters, updates and sums by name, the one alias every module uses.

A read-only ``Mapping``: a function that takes ``Tensors`` promises not to add or remove
names; functions that hand back a new set return ``dict[str, Tensor]``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

Tensors = Mapping[str, torch.Tensor]
