"""The configuration schema shared by every experiment file in `configs/`.

Every key the trainer reads is declared here with its default, so that a typo in a
`--config.key=value` override is an error instead of a silently ignored setting.
Experiment files start from `base_config()` and change what their recipe needs.
"""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    """Defaults: the paper's CIFAR-10 recipe for ResNet-20 (section 4.2)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 128  # global, over all devices and processes
    # Duration: num_train_steps wins when > 0, else num_epochs (of the training split).
    c.num_train_steps = 64_000
    c.num_epochs = -1.0
    c.log_every_steps = 100
    c.eval_every_steps = 4_000
    c.checkpoint_every_steps = 4_000
    c.keep_checkpoints = 3  # most recent ones kept, plus the best by eval error
    c.steps_per_call = 1  # training steps fused into one jitted call (device-resident data only)
    c.profile_steps = ""  # e.g. "100:110": a jax.profiler trace of those steps into the workdir
    c.nan_policy = "stop"  # "stop" | "skip": what a non-finite loss does
    c.allow_config_change = False  # resume a run whose model/data/seed/batch/optimizer/schedule differ

    c.model = ml_collections.ConfigDict()
    c.model.family = "cifar"  # "cifar" | "imagenet"
    c.model.depth = 20
    c.model.shortcut = "A"  # "A" | "B" | "C" | "none" (plain net)
    c.model.stride_on = "1x1"  # bottleneck downsampling: "1x1" (paper, v1) | "3x3" (v1.5)
    c.model.dtype = "auto"  # compute dtype: "auto" = bfloat16 on GPU/TPU, float32 on CPU
    c.model.scan_blocks = False  # nn.scan over the identical blocks of each stage
    c.model.scan_unroll = 1  # unroll factor of that scan
    c.model.remat = False  # rematerialise each block in the backward pass
    c.model.stem_channels = 0  # 4 or 8: zero-pad the image channels for the first conv (GPU speed)
    c.model.bn = "global"  # "global" | "per_device" | "ghost"
    c.model.bn_group_size = 0  # examples per BN group when bn == "ghost"
    c.model.bn_momentum = 0.9
    c.model.bn_epsilon = 1e-5
    c.model.zero_init_residual = False  # zero-init the last BN scale of each block
    c.model.init = "fan_in"  # He-normal mode: "fan_in" (paper) | "fan_out" (torchvision)

    c.data = ml_collections.ConfigDict()
    c.data.name = "cifar10"  # "cifar10" | "cifar100" | "imagenet2012" | any TFDS dataset | "synthetic"
    c.data.path = ""  # image folder or .tar/.tar.gz laid out <split>/<class>/<image>; "" = TFDS
    c.data.tfds_dir = ""  # TFDS data_dir; "" = TFDS default
    c.data.cache_dir = ""  # decoded-array cache for image folders; "" = ~/.cache/resnet_jax
    c.data.val_split = 0  # hold out this many training images as the evaluation set (paper: 5000)
    c.data.mean = "pixel"  # CIFAR normalisation: "pixel" (mean image) | "channel" (mean/std)
    c.data.augment = "paper"  # ImageNet training: "paper" | "inception"
    c.data.eval_crop = "center"  # ImageNet evaluation: "center" | "ten"
    c.data.image_size = 224  # ImageNet crop size
    c.data.eval_batch_size = 0  # 0 = batch_size
    c.data.shuffle_buffer = 16_384
    c.data.num_classes = 0  # 0 = the dataset's
    c.data.synthetic_examples = 0  # size of the "synthetic" split; 0 = 10 batches

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = False
    c.optimizer.weight_decay = 1e-4  # L2, added to the gradient (Caffe / PyTorch SGD)
    c.optimizer.decay_bn_and_bias = True  # False excludes BN scales/biases and the FC bias

    c.schedule = ml_collections.ConfigDict()
    c.schedule.name = "piecewise"  # "piecewise" | "cosine"
    c.schedule.base_lr = 0.1
    c.schedule.scale_by_batch = False  # linear scaling rule: lr = base_lr * batch_size / 256
    c.schedule.boundaries = (32_000, 48_000)  # steps; used when boundaries_epochs is empty
    c.schedule.boundaries_epochs = ()  # e.g. (30, 60, 90)
    c.schedule.decay_factor = 0.1
    c.schedule.warmup = "none"  # "none" | "constant" (paper's 0.01 start) | "linear"
    c.schedule.warmup_steps = 0
    c.schedule.warmup_epochs = 0.0
    c.schedule.warmup_lr = 0.01  # the constant warm-up's learning rate; where the linear one starts
    return c
