"""A node's metadata for gossip: what the UI, the API and the scheduler show
for every node (R8: CPU/GPU use, memory, task progress).

    {
      "version": "0.1.0",                 # ragraft's version
      "host": "box-1", "pid": 4242,
      "cpu_percent": 12.5,                # all cores, since the previous sample
      "cpu_count": 8,
      "mem_used": 2147483648, "mem_total": 8589934592, "mem_percent": 25.0,
      "gpus": [{"index": 0, "name": "...", "util_percent": 40,
                "mem_used": ..., "mem_total": ...}],   # only when a GPU exists
      "gpu_util_percent": 40.0,           # mean over GPUs  } only when
      "gpu_mem_used": ..., "gpu_mem_total": ...,      # sums } a GPU exists
      "slots_total": 2, "slots_used": 1,  # filled by the runtime
      "running": [{"id": "task-1", "progress": 0.4}],
    }

Sampling is cheap and never blocks: psutil.cpu_percent(interval=None)
compares with the previous call, and NVML queries are local driver calls.
nvidia-ml-py is optional at run time: without the package, the driver library
or a GPU, the GPU fields are simply absent.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
from typing import Any

import psutil

log = logging.getLogger(__name__)

RuntimeFields = Callable[[], Mapping[str, Any]]


def software_version() -> str:
    try:
        return _dist_version("ragraft")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


class _Nvml:
    """NVML through nvidia-ml-py, or nothing.  Any failure after a successful
    start disables GPU sampling for good rather than failing every second."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._handles: list[Any] = []
        try:
            import pynvml  # the module nvidia-ml-py installs
        except ImportError:
            return
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound, _DriverNotLoaded...
            log.debug("no GPU metrics: %s", exc)
            return
        if handles:
            self._nvml = pynvml
            self._handles = handles

    @property
    def available(self) -> bool:
        return self._nvml is not None

    def sample(self) -> list[dict[str, Any]]:
        nvml = self._nvml
        if nvml is None:
            return []
        out = []
        try:
            for index, handle in enumerate(self._handles):
                util = nvml.nvmlDeviceGetUtilizationRates(handle)
                mem = nvml.nvmlDeviceGetMemoryInfo(handle)
                name = nvml.nvmlDeviceGetName(handle)
                out.append(
                    {
                        "index": index,
                        "name": name.decode() if isinstance(name, bytes) else str(name),
                        "util_percent": int(util.gpu),
                        "mem_used": int(mem.used),
                        "mem_total": int(mem.total),
                    }
                )
        except Exception as exc:  # noqa: BLE001 - a GPU fell off the bus, a driver reload...
            log.warning("GPU metrics disabled: %s", exc)
            self._nvml = None
            return []
        return out


class NodeMetrics:
    """The default gossip metadata provider: call it for a fresh sample.

    `runtime` returns the fields only the runtime knows (slots_total,
    slots_used, running); they override the defaults (0, 0, []).  It is called
    on the event loop, like the rest, so it must only read in-memory state."""

    def __init__(self, runtime: RuntimeFields | None = None, *, gpu: bool = True) -> None:
        self._runtime = runtime
        self._gpu = _Nvml() if gpu else None
        self._static = {
            "version": software_version(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "cpu_count": psutil.cpu_count() or 1,
        }
        psutil.cpu_percent(interval=None)  # the first call only sets the baseline

    @property
    def has_gpu(self) -> bool:
        return self._gpu is not None and self._gpu.available

    def __call__(self) -> dict[str, Any]:
        vm = psutil.virtual_memory()
        meta: dict[str, Any] = dict(self._static)
        meta.update(
            cpu_percent=round(psutil.cpu_percent(interval=None), 1),
            mem_used=int(vm.total - vm.available),
            mem_total=int(vm.total),
            mem_percent=round(float(vm.percent), 1),
            slots_total=0,
            slots_used=0,
            running=[],
        )
        gpus = self._gpu.sample() if self._gpu is not None else []
        if gpus:
            meta["gpus"] = gpus
            meta["gpu_util_percent"] = round(sum(g["util_percent"] for g in gpus) / len(gpus), 1)
            meta["gpu_mem_used"] = sum(g["mem_used"] for g in gpus)
            meta["gpu_mem_total"] = sum(g["mem_total"] for g in gpus)
        if self._runtime is not None:
            meta.update(self._runtime())
        return meta
