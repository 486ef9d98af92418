"""Running statistics of scalar training metrics (losses, timings) for the log."""
from collections import deque

import numpy as np


class SmoothedValue:
    """A series of floats: the last ``window_size`` values (for ``median`` and
    ``avg``) and the running total over all of them (for ``global_avg``)."""

    def __init__(self, window_size=20):
        self.window = deque(maxlen=window_size)
        self.total = 0.0
        self.count = 0

    def update(self, value):
        value = float(value)
        self.window.append(value)
        self.total += value
        self.count += 1

    @property
    def latest(self):
        return self.window[-1]

    @property
    def median(self):
        return float(np.median(self.window))

    @property
    def avg(self):
        return float(np.mean(self.window))

    @property
    def global_avg(self):
        return self.total / self.count


class MetricLogger:
    """Named :class:`SmoothedValue` series; ``str()`` gives
    ``"name: median (global_avg)"`` for each, joined by ``delimiter``."""

    def __init__(self, delimiter="  ", window_size=20):
        self.delimiter = delimiter
        self.window_size = window_size
        self.meters = {}

    def update(self, **values):
        """Append one value (a Python number or a one-element tensor; a tensor
        costs a host sync) to each named series."""
        for name, value in values.items():
            if name not in self.meters:
                self.meters[name] = SmoothedValue(self.window_size)
            self.meters[name].update(value)

    def __getitem__(self, name):
        return self.meters[name]

    def __getattr__(self, name):
        """``meters.loss`` as well as ``meters["loss"]`` (maskrcnn-benchmark's style)."""
        meters = self.__dict__.get("meters", {})
        if name in meters:
            return meters[name]
        raise AttributeError(f"{type(self).__name__} has no attribute or meter {name!r}; "
                             f"meters: {', '.join(meters) or 'none yet'}")

    def __contains__(self, name):
        return name in self.meters

    def summary(self, names=None):
        """``"name: median (global_avg)"`` for ``names`` (default: all, in the
        order they were first updated), joined by ``delimiter``."""
        names = list(self.meters) if names is None else names
        return self.delimiter.join(
            f"{name}: {self.meters[name].median:.4f} ({self.meters[name].global_avg:.4f})" for name in names
        )

    def __str__(self):
        return self.summary()
