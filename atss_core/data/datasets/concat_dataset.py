"""Concatenation of datasets that keeps the dataset interface used by the loaders."""
import bisect

import torch


class ConcatDataset(torch.utils.data.ConcatDataset):
    """Datasets one after another; indices run over all of them.

    ``dataset[i]`` is the sample of the dataset that holds ``i``, with its index
    mapped back to the concatenated index space; ``get_img_info(i)`` likewise.
    ``name`` joins the parts' names with "+".
    """

    def __init__(self, datasets):
        super().__init__(datasets)
        self.name = "+".join(getattr(d, "name", type(d).__name__) for d in self.datasets)

    def locate(self, index):
        """(dataset number, index inside that dataset) of concatenated ``index``."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        part = bisect.bisect_right(self.cumulative_sizes, index)
        offset = self.cumulative_sizes[part - 1] if part > 0 else 0
        return part, index - offset

    def __getitem__(self, index):
        part, local = self.locate(index)
        sample = self.datasets[part][local]
        if sample is None:
            return None
        image, target, local = sample
        offset = self.cumulative_sizes[part - 1] if part > 0 else 0
        return image, target, offset + local

    def get_img_info(self, index):
        part, local = self.locate(index)
        return self.datasets[part].get_img_info(local)
