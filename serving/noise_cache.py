"""The diffusion noise of whole canvases, cached between the tile batches of one image."""

from __future__ import annotations

from collections import OrderedDict

import torch

from hndsr.model_pass import noise_fields


class NoiseCache:
    """Noise fields by (seed, channels, height, width), kept LRU within ``budget`` bytes: the canvas was
    bounded before (serving.batch_decode.check_canvas), and a field larger than the whole budget is made
    for its batch and not kept."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.fields: OrderedDict[tuple[int, int, int, int], torch.Tensor] = OrderedDict()
        self.bytes = 0

    def get(self, seed: int, channels: int, lh: int, lw: int) -> torch.Tensor:
        """The noise of a whole canvas (the batches of one image share it)."""
        key = (seed, channels, lh, lw)
        field = self.fields.get(key)
        if field is not None:
            self.fields.move_to_end(key)
            return field
        field = noise_fields(seed, channels, lh, lw)[0]
        size = field.numel() * field.element_size()
        if size <= self.budget:
            while self.fields and self.bytes + size > self.budget:
                _, old = self.fields.popitem(last=False)
                self.bytes -= old.numel() * old.element_size()
            self.fields[key] = field
            self.bytes += size
        return field

    def clear(self) -> None:
        self.fields.clear()
        self.bytes = 0
