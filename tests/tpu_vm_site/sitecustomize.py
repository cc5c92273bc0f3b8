"""Test-only start-up hook: jax's PCI probe sees 4 TPU v4 chips, as on a Cloud TPU VM (compute stays on CPU).

jax recognises a Cloud TPU VM by the TPU chips on its PCI bus (jax/_src/hardware_utils.py reads
/sys/bus/pci/devices/*/vendor and device) plus libtpu; the tests present only that hardware fact here
(with JAX_FORCE_TPU_INIT=1, jax's own switch for a missing libtpu, and JAX_PLATFORMS=cpu). Everything after
it, the GCE metadata server or GKE's variables, the tests present as the platform does. Active only on
PYTHONPATH, which only the TPU tests set.
"""

import importlib.abc
import importlib.machinery
import sys


class _TpuChipsOnPci(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "jax._src.hardware_utils":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            module.num_available_tpu_chips_and_device_id = lambda: (4, module.TpuVersion.v4)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _TpuChipsOnPci())
