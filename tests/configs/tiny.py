"""A CIFAR ResNet-8 on synthetic 32x32 data for a few steps: the CLI and multi-process tests' config."""

from resnet_jax import schema


def get_config(arg: str | None = None):
    c = schema.base_config()
    c.model.depth = 8
    c.batch_size = 16
    c.num_train_steps = 4
    c.log_every_steps = 2
    c.eval_every_steps = 4
    c.checkpoint_every_steps = 2
    c.data.name = "synthetic"
    c.data.image_size = 32
    c.data.synthetic_examples = 64
    c.data.eval_batch_size = 24
    if arg == "plain":  # the plain counterpart (no shortcuts)
        c.model.shortcut = "none"
    if arg == "cifar":  # the real JPEG archive beside the checkout
        c.data.name = "cifar10"
        c.data.path = "../shared/datasets/cifar10-jpeg.tar.gz"
        c.data.val_split = 200
    return c
