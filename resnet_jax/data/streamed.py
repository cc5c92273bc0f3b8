"""ImageNet (and any TFDS image-classification dataset) streamed with tf.data, one pipeline per process, and
the ImageNet preprocessing as TensorFlow graph functions (shared with the folder reader, streamed_folder.py).

Host batches of decoded, augmented images: normalised in a float dtype, or uint8 with each crop's lighting
offset for the step to normalise; what the devices do with them is inputs.py's.

Training ("paper", section 3.4): shorter side resized to a random length in [256, 480], random 224 crop,
horizontal flip, mean subtraction, AlexNet PCA colour noise (std 0.1). "inception": random resized crop
(area [0.08, 1], aspect [3/4, 4/3]) and flip. Both are fused into the JPEG decode
(tf.image.decode_and_crop_jpeg decodes only the crop window). Evaluation: "center" (shorter side 256,
centre 224) or "ten" (four corners + centre of the image resized to shorter side 256, and their flips).

Resumption: epoch e of process p reads its part of the split in a file order and through a shuffle
buffer whose seeds, like each example's augmentation seed, derive from (seed, e, p); resuming at step s
rebuilds epoch s // S and skips its first (s % S) * local_batch records before decoding, so the stream
is exactly that of an uninterrupted run given the same TFDS files, process count, batch size and
TensorFlow version. Epochs have S = num_train // global_batch steps; the remainder is dropped.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import ml_collections
import numpy as np

from resnet_jax import config
from resnet_jax.data.common import DataError
from resnet_jax.data.tfds_meta import spans, tf_module, tfds_builder

IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)
IMAGENET_STD_RGB = (58.395, 57.12, 57.375)
# AlexNet "fancy PCA" lighting noise: eigenvalues (of [0, 1] pixels, scaled here to [0, 255]) and
# eigenvectors (columns) of the ImageNet RGB covariance, as in fb.resnet.torch.
PCA_EIGVAL = tuple(255.0 * v for v in (0.2175, 0.0188, 0.0045))
PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))
PCA_STD = 0.1
PAPER_SCALES = (256, 480)
EVAL_RESIZE = 256  # shorter side for evaluation, at image_size 224 (scaled with image_size)


def _local_batch(global_batch_size: int) -> tuple[int, int, int]:
    import jax

    count, index = jax.process_count(), jax.process_index()
    if global_batch_size <= 0 or global_batch_size % count:
        raise DataError(f"batch size {global_batch_size} must be a positive multiple of {count} processes.")
    return global_batch_size // count, index, count


def derived_seeds(*values: int) -> list[int]:
    """Three 31-bit seeds derived from `values` (a pure function)."""
    words = np.random.SeedSequence([int(v) % (1 << 63) for v in values]).generate_state(3)
    return [int(w) >> 1 for w in words]


# ---- Decoding and augmentation (TensorFlow graph functions). ----


def _image_shape(tf, data):
    return tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.image.extract_jpeg_shape(data)[:2],
        lambda: tf.shape(tf.io.decode_image(data, channels=3, expand_animations=False))[:2],
    )


def _decode_window(tf, data, window):
    """Decode only the window [y, x, h, w] of a JPEG (any other format: decode, then crop)."""

    def other():
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        return tf.slice(image, [window[0], window[1], 0], [window[2], window[3], 3])

    return tf.cond(
        tf.io.is_jpeg(data), lambda: tf.image.decode_and_crop_jpeg(data, window, channels=3), other
    )


def _resize(tf, image, hw):
    """Bilinear resize to `hw`, antialiased when it shrinks (a triangle filter as wide as the scale, as PIL's
    and torchvision's bilinear); a pure upscale takes plain bilinear, the same filter without the
    antialiasing kernel's setup cost."""
    shrinks = tf.reduce_any(tf.shape(image)[:2] > tf.cast(hw, tf.int32))
    return tf.cond(
        shrinks,
        lambda: tf.image.resize(image, hw, method="bilinear", antialias=True),
        lambda: tf.image.resize(image, hw, method="bilinear"),
    )


def _paper_scales(size: int) -> tuple[int, int]:
    """The shorter-side range [256, 480] at image_size 224, scaled with image_size (as EVAL_RESIZE is)."""
    return round(PAPER_SCALES[0] * size / 224), round(PAPER_SCALES[1] * size / 224)


def _paper_window(tf, shape, seed, size: int):
    """Crop of an image whose shorter side is resized to a random L in [256, 480]: a size/L-scaled square.

    At other image sizes L is drawn from the scaled range, so the crop covers the same part of the image
    as at 224 and matches the evaluation crop's scale.
    """
    s_len, s_y, s_x = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    h, w = shape[0], shape[1]
    short = tf.minimum(h, w)
    low, high = _paper_scales(size)
    length = tf.random.stateless_uniform([], s_len, low, high + 1, tf.int32)
    side = tf.cast(tf.round(size * tf.cast(short, tf.float32) / tf.cast(length, tf.float32)), tf.int32)
    side = tf.clip_by_value(side, 1, short)
    y = tf.random.stateless_uniform([], s_y, 0, h - side + 1, tf.int32)
    x = tf.random.stateless_uniform([], s_x, 0, w - side + 1, tf.int32)
    return tf.stack([y, x, side, side])


def _inception_window(tf, shape, seed):
    begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.stack([shape[0], shape[1], 3]),
        bounding_boxes=tf.zeros([1, 0, 4]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    return tf.stack([begin[0], begin[1], extent[0], extent[1]])


def _pca_rgb(tf, seed):
    """The AlexNet PCA lighting offset [3] (RGB, 0-255 scale) drawn from the [2] seed."""
    alpha = tf.random.stateless_normal([3], seed, stddev=PCA_STD)
    return tf.linalg.matvec(tf.constant(PCA_EIGVEC), alpha * tf.constant(PCA_EIGVAL))


def _pca_lighting(tf, image, seed):
    return image + _pca_rgb(tf, seed)


def _channel_constant(tf, values, shape):
    """[3] per-channel values as a tensor of the image's whole (static) shape.

    TensorFlow's broadcasting kernels take ~1 ms per op on a 224x224x3 image (this 2-core CPU,
    BENCHMARKS.md), same-shape elementwise ops next to nothing; a dynamic shape broadcasts.
    """
    values = np.asarray(values, np.float32)
    if shape.is_fully_defined():
        return tf.constant(np.broadcast_to(values, shape.as_list()))
    return tf.constant(values)


def _normalize(tf, image, mode: str, dtype, rgb=None):
    """(image + rgb - mean) / std ("channel") or image + rgb - mean ("pixel"), as one multiply-add.

    `rgb` is an optional per-image [3] offset (PCA lighting), added before the normalisation.
    """
    mean = np.asarray(IMAGENET_MEAN_RGB, np.float32)
    scale = 1 / np.asarray(IMAGENET_STD_RGB, np.float32) if mode == "channel" else np.ones(3, np.float32)
    offset = -mean * scale
    if rgb is None:
        out = image * _channel_constant(tf, scale, image.shape) + _channel_constant(tf, offset, image.shape)
    else:
        bias = tf.broadcast_to(tf.constant(offset) + rgb * tf.constant(scale), tf.shape(image))
        out = image * _channel_constant(tf, scale, image.shape) + bias
    return tf.cast(out, dtype)


def _to_uint8(tf, image):
    """Round a resized crop to uint8. Bilinear weights (antialiased or not) are non-negative and sum to 1, so
    the values stay within the decoded [0, 255] (up to float rounding) and need no clip: + 0.5 and the
    truncating cast cost half of round + clip + cast (BENCHMARKS.md)."""
    return tf.cast(image + 0.5, tf.uint8)


def _train_crop(tf, data, seed, augment: str, size: int):
    """(resized float32 crop [size, size, 3] before its flip, flip seed, PCA lighting offset or None)."""
    s_crop, s_flip, s_light = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    shape = _image_shape(tf, data)
    if augment == "paper":
        window = _paper_window(tf, shape, s_crop, size)
    elif augment == "inception":
        window = _inception_window(tf, shape, s_crop)
    else:
        raise DataError(f"data.augment must be 'paper' or 'inception', not {augment!r}.")
    image = tf.ensure_shape(_resize(tf, _decode_window(tf, data, window), [size, size]), [size, size, 3])
    return image, s_flip, _pca_rgb(tf, s_light) if augment == "paper" else None


def train_preprocess(tf, data, seed, augment: str, size: int, mode: str, dtype):
    """JPEG bytes -> augmented, normalised [size, size, 3] image; randomness from the [2] int64 `seed`."""
    image, s_flip, rgb = _train_crop(tf, data, seed, augment, size)
    image = tf.image.stateless_random_flip_left_right(image, s_flip)
    return _normalize(tf, image, mode, dtype, rgb)


def train_preprocess_uint8(tf, data, seed, augment: str, size: int):
    """The same crop and flip as train_preprocess, as uint8, and the PCA lighting offset [3] float32.

    Normalising on the device, (image + rgb - mean) / std, gives train_preprocess's image up to the
    uint8 rounding (|error| <= 0.5 of a level) at a quarter of the bytes and less host time.
    """
    image, s_flip, rgb = _train_crop(tf, data, seed, augment, size)
    image = tf.image.stateless_random_flip_left_right(_to_uint8(tf, image), s_flip)
    return image, tf.zeros([3], tf.float32) if rgb is None else rgb


def _eval_resize(size: int) -> int:
    return round(size * EVAL_RESIZE / 224)


def _center_crop(tf, data, size: int):
    shape = _image_shape(tf, data)
    h, w = shape[0], shape[1]
    side = tf.cast(tf.round(tf.cast(tf.minimum(h, w), tf.float32) * size / _eval_resize(size)), tf.int32)
    window = tf.stack([(h - side) // 2, (w - side) // 2, side, side])
    return tf.ensure_shape(_resize(tf, _decode_window(tf, data, window), [size, size]), [size, size, 3])


def center_preprocess(tf, data, size: int, mode: str, dtype):
    """The centre size x size crop of the image resized to shorter side 256 (decoding only that window)."""
    return _normalize(tf, _center_crop(tf, data, size), mode, dtype)


def center_preprocess_uint8(tf, data, size: int):
    """center_preprocess before normalisation, as uint8 (normalised on the device)."""
    return _to_uint8(tf, _center_crop(tf, data, size))


def _ten_crops(tf, data, size: int):
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = _eval_resize(size) / tf.reduce_min(hw)
    new = tf.maximum(tf.cast(tf.round(hw * scale), tf.int32), size)
    image = _resize(tf, image, new)
    h, w = new[0] - size, new[1] - size
    corners = [(0, 0), (0, w), (h, 0), (h, w), (h // 2, w // 2)]
    crops = tf.stack([tf.slice(image, [y, x, 0], [size, size, 3]) for y, x in corners])
    return tf.ensure_shape(tf.concat([crops, tf.reverse(crops, axis=[2])], axis=0), [10, size, size, 3])


def ten_crop_preprocess(tf, data, size: int, mode: str, dtype):
    """[10, size, size, 3]: four corners and the centre of the image at shorter side 256, then their flips."""
    return _normalize(tf, _ten_crops(tf, data, size), mode, dtype)


def ten_crop_preprocess_uint8(tf, data, size: int):
    """ten_crop_preprocess before normalisation, as uint8 (normalised on the device)."""
    return _to_uint8(tf, _ten_crops(tf, data, size))


# ---- One example as the iterators map it (shared by the TFDS and the folder iterators). ----


def is_uint8(dtype: Any) -> bool:
    return (dtype if isinstance(dtype, str) else np.dtype(dtype).name) == "uint8"


def train_example(tf, cfg_data: ml_collections.ConfigDict, dtype: Any):
    """(seed [2] int64, encoded image) -> {"image": the augmented crop}: normalised in `dtype`, or for
    uint8 the crop before its normalisation plus "rgb", its PCA lighting offset (zeros for "inception")."""
    augment, size, mode = cfg_data.augment, int(cfg_data.image_size), cfg_data.mean
    if is_uint8(dtype):

        def uint8(seed, data):
            image, rgb = train_preprocess_uint8(tf, data, seed, augment, size)
            return {"image": image, "rgb": rgb}

        return uint8
    out = _tf_dtype(tf, dtype)
    return lambda seed, data: {"image": train_preprocess(tf, data, seed, augment, size, mode, out)}


def eval_example(tf, cfg_data: ml_collections.ConfigDict, dtype: Any):
    """(encoded image -> the evaluation crop(s) in `dtype` or uint8, the zero image that pads a batch)."""
    size, mode, crop = int(cfg_data.image_size), cfg_data.mean, cfg_data.eval_crop
    shape = [size, size, 3] if crop == "center" else [10, size, size, 3]
    if is_uint8(dtype):
        preprocess = center_preprocess_uint8 if crop == "center" else ten_crop_preprocess_uint8
        return (lambda data: preprocess(tf, data, size)), tf.zeros(shape, tf.uint8)
    preprocess, out = center_preprocess if crop == "center" else ten_crop_preprocess, _tf_dtype(tf, dtype)
    return (lambda data: preprocess(tf, data, size, mode, out)), tf.zeros(shape, out)


# ---- The iterators. ----


def _as_dataset(builder, split: str, shuffle_seed: int | None):
    import tensorflow_datasets as tfds

    read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, skip_prefetch=True, try_autocache=False)
    return builder.as_dataset(
        split=split,
        shuffle_files=shuffle_seed is not None,
        read_config=read_config,
        decoders={"image": tfds.decode.SkipDecoding()},
    )


def _tf_dtype(tf, dtype: Any):
    return tf.dtypes.as_dtype(np.dtype(dtype).name if not isinstance(dtype, str) else dtype)


def train_epoch_dataset(
    builder,
    cfg_data: ml_collections.ConfigDict,
    split: str,
    local_batch: int,
    steps: int,
    skip: int,
    seed: int,
    epoch: int,
    process: int,
    dtype: Any = "float32",
):
    """tf.data pipeline of one epoch's batches [skip, steps) of this process (deterministic in its seeds);
    `dtype` uint8: crops before normalisation, with their lighting offsets ("rgb")."""
    tf = tf_module()
    file_seed, shuffle_seed, aug_seed = derived_seeds(seed, epoch, process)
    crop = train_example(tf, cfg_data, dtype)

    def prepare(i, example):
        seed_pair = tf.stack([tf.constant(aug_seed, tf.int64), i])
        return {**crop(seed_pair, example["image"]), "label": tf.cast(example["label"], tf.int32)}

    ds = _as_dataset(builder, split, file_seed).enumerate()
    ds = ds.shuffle(int(cfg_data.shuffle_buffer), seed=shuffle_seed)
    ds = ds.skip(skip * local_batch).take((steps - skip) * local_batch)
    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def train_iterator(
    cfg_data: ml_collections.ConfigDict,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    dtype: Any = "float32",
) -> Iterator[dict[str, np.ndarray]]:
    """This process's training batches from global step `start_step` on, forever (see the module notes)."""
    local_batch, index, count = _local_batch(global_batch_size)
    builder = tfds_builder(cfg_data.name, cfg_data.tfds_dir, allow_download=True)
    train, _ = spans(builder, cfg_data)
    steps = config.steps_per_epoch(len(train), global_batch_size)
    epoch, skip = divmod(int(start_step), steps)
    split = train.part(index, count, equal=True)
    while True:
        ds = train_epoch_dataset(
            builder, cfg_data, split, local_batch, steps, skip, seed, epoch, index, dtype
        )
        yield from ds.as_numpy_iterator()
        epoch, skip = epoch + 1, 0


def eval_batches(num_examples: int, global_batch_size: int, process_count: int) -> int:
    """Evaluation batches per process: enough for the largest process part, the same on every process."""
    return math.ceil(math.ceil(num_examples / process_count) / (global_batch_size // process_count))


def eval_iterator(
    cfg_data: ml_collections.ConfigDict, global_batch_size: int, dtype: Any = "float32"
) -> Iterator[dict[str, np.ndarray]]:
    """Every evaluation example once, in this process's part; the last batches padded, with a mask."""
    tf = tf_module()
    local_batch, index, count = _local_batch(global_batch_size)
    builder = tfds_builder(cfg_data.name, cfg_data.tfds_dir, allow_download=True)
    _, span = spans(builder, cfg_data)
    crop, zeros = eval_example(tf, cfg_data, dtype)

    def prepare(example):
        image = crop(example["image"])
        return {"image": image, "label": tf.cast(example["label"], tf.int32), "mask": tf.constant(True)}

    padding = {"image": zeros, "label": tf.constant(0), "mask": tf.constant(False)}
    num = eval_batches(len(span), global_batch_size, count) * local_batch
    ds = _as_dataset(builder, span.part(index, count, equal=False), None)
    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat()).take(num)
    yield from ds.batch(local_batch).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()
