"""Datasets as the trainer reads them: small sets held on the devices (device_held.py); TFDS splits and
ImageNet-style JPEG folders streamed through tf.data (streamed.py, streamed_folder.py) or DALI (dali.py).

Importing this package is cheap (NumPy only): JAX comes with device_held, TensorFlow with the TFDS modules.
Sharding the batches over devices is inputs.py's, not data's. See docs/data.md.
"""

from __future__ import annotations

import ml_collections

from resnet_jax import config
from resnet_jax.config import DataError

__all__ = ["DataError", "dataset_info", "validate"]


def validate(cfg_data: ml_collections.ConfigDict) -> None:
    """The dataset checks, run once per run before anything is built: the `data` section's rules, then
    an existing, well-laid-out path or a known (and, if manual, prepared) TFDS dataset."""
    config.check_data(cfg_data)
    if config.is_device_held(cfg_data):
        from resnet_jax.data import device_held

        device_held.validate(cfg_data)
    elif cfg_data.path:
        from resnet_jax.data import jpeg_folder

        jpeg_folder.check_layout(cfg_data.path)
        found = len(jpeg_folder.classes(cfg_data.path))
        if 0 < cfg_data.num_classes < found:
            raise DataError(
                f"data.num_classes={cfg_data.num_classes} is below the {found} class folders of data.path "
                f"{cfg_data.path!r}: use 0 (the folder's count) or at least {found}."
            )
    else:
        from resnet_jax.data import tfds_meta

        tfds_meta.check(cfg_data)
    if cfg_data.pipeline == "dali":
        from resnet_jax.data import dali

        dali.require_dali()


def dataset_info(cfg_data: ml_collections.ConfigDict, batch_size: int = 128) -> dict:
    """{"num_train", "num_eval", "num_classes", "image_shape"}, without decoding the dataset when possible."""
    if config.is_device_held(cfg_data):
        from resnet_jax.data import device_held

        return device_held.info(cfg_data, batch_size)
    if cfg_data.path:
        from resnet_jax.data import streamed_folder

        return streamed_folder.info(cfg_data)
    from resnet_jax.data import tfds_meta

    return tfds_meta.info(cfg_data)
