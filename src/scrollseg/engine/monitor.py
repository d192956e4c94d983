"""Background sampling of GPU utilisation, memory and power per device (nvidia-ml-py).

A daemon thread reads NVML every ``interval`` seconds; ``summary()`` gives the mean
utilisation and power and the peak memory per device. Without NVML or a GPU the
monitor does nothing, so callers need no special case.
"""
from __future__ import annotations

import threading

import torch


class GpuMonitor:
    def __init__(self, interval: float = 2.0):
        self.interval = interval
        self.samples: dict[int, list[tuple[float, float, float]]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml = None

    def __enter__(self) -> "GpuMonitor":
        if not torch.cuda.is_available():
            return self
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
        except Exception:  # no driver library: nothing to sample
            return self
        self._thread = threading.Thread(target=self._run, daemon=True, name="scrollseg-gpu-monitor")
        self._thread.start()
        return self

    def _run(self) -> None:
        nvml = self._nvml
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        while not self._stop.wait(self.interval):
            for i, h in enumerate(handles):
                try:
                    util = nvml.nvmlDeviceGetUtilizationRates(h).gpu
                    mem = nvml.nvmlDeviceGetMemoryInfo(h).used / 2**30
                    power = nvml.nvmlDeviceGetPowerUsage(h) / 1000.0
                except Exception:
                    continue
                self.samples.setdefault(i, []).append((float(util), float(mem), float(power)))

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 1)
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass

    def latest(self) -> dict:
        out = {}
        for i, s in self.samples.items():
            if s:
                out[f"gpu{i}/util"], out[f"gpu{i}/memory_gib"], out[f"gpu{i}/power_w"] = s[-1]
        return out

    def summary(self) -> dict:
        out = {}
        for i, s in self.samples.items():
            if s:
                out[f"gpu{i}/util_mean"] = sum(v[0] for v in s) / len(s)
                out[f"gpu{i}/memory_gib_peak"] = max(v[1] for v in s)
                out[f"gpu{i}/power_w_mean"] = sum(v[2] for v in s) / len(s)
        return out
