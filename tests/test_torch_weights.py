"""PyTorch -> JAX weights: logits of the converted model equal the torch reference's.

The torch references are written here (torchvision is not installed): the classic CIFAR ResNet with
option A (LambdaLayer zero padding) or B (1x1 conv + BN) shortcuts, and torchvision's ResNet (v1.5).
"""

import re

import jax
import numpy as np
import pytest

from resnet_jax import models

torch = pytest.importorskip("torch")
tnn = torch.nn
F = torch.nn.functional


class LambdaLayer(tnn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class CifarBlock(tnn.Module):
    def __init__(self, in_planes, planes, stride, option):
        super().__init__()
        self.conv1 = tnn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.shortcut = tnn.Sequential()
        if stride != 1 or in_planes != planes:
            if option == "A":
                pad = planes // 4
                self.shortcut = LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad)))
            else:
                self.shortcut = tnn.Sequential(
                    tnn.Conv2d(in_planes, planes, 1, stride, bias=False), tnn.BatchNorm2d(planes)
                )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(tnn.Module):
    def __init__(self, n, option, num_classes=10):
        super().__init__()
        self.conv1 = tnn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(16)
        in_planes = 16
        for s, planes in enumerate((16, 32, 64), start=1):
            blocks = []
            for i in range(n):
                blocks.append(CifarBlock(in_planes, planes, 2 if s > 1 and i == 0 else 1, option))
                in_planes = planes
            setattr(self, f"layer{s}", tnn.Sequential(*blocks))
        self.linear = tnn.Linear(64, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(F.avg_pool2d(out, out.size()[3]).flatten(1))


class BasicBlock(tnn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride, downsample):
        super().__init__()
        self.conv1 = tnn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(tnn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride, downsample):
        super().__init__()
        self.conv1 = tnn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # v1.5: stride on the 3x3
        self.bn2 = tnn.BatchNorm2d(planes)
        self.conv3 = tnn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = tnn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchvisionResNet(tnn.Module):
    def __init__(self, block, layers, num_classes=1000):
        super().__init__()
        self.conv1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = tnn.BatchNorm2d(64)
        self.maxpool = tnn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for s, (n, planes) in enumerate(zip(layers, (64, 128, 256, 512), strict=True), start=1):
            stride = 1 if s == 1 else 2
            downsample = None
            if stride != 1 or inplanes != planes * block.expansion:
                downsample = tnn.Sequential(
                    tnn.Conv2d(inplanes, planes * block.expansion, 1, stride, bias=False),
                    tnn.BatchNorm2d(planes * block.expansion),
                )
            blocks = [block(inplanes, planes, stride, downsample)]
            inplanes = planes * block.expansion
            blocks += [block(inplanes, planes, 1, None) for _ in range(1, n)]
            setattr(self, f"layer{s}", tnn.Sequential(*blocks))
        self.fc = tnn.Linear(512 * block.expansion, num_classes)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def randomised(net, x):
    """Calibrate BN running stats on `x` (so activations stay O(1)), then perturb them and BN's affine."""
    gen = torch.Generator().manual_seed(0)
    bns = [m for m in net.modules() if isinstance(m, tnn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: one batch sets the statistics
    with torch.no_grad():
        net.train()(x)
        for bn in bns:
            c = bn.num_features
            bn.running_mean += 0.2 * torch.randn(c, generator=gen)
            bn.running_var *= 0.5 + torch.rand(c, generator=gen)
            bn.weight.copy_(0.5 + torch.rand(c, generator=gen))
            bn.bias.copy_(0.2 * torch.randn(c, generator=gen))
        head = net.fc if hasattr(net, "fc") else net.linear
        scale = net.eval()(x).std()  # deep nets reach logits in the thousands: bring them to O(1)
        head.weight /= scale
        head.bias /= scale
    return net


def assert_same_logits(net, model, size, batch=4):
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size)
    net = randomised(net, x)
    with torch.no_grad():
        expected = net(x).numpy()
    variables = models.load_torch_state_dict(model, net.state_dict())
    logits = jax.jit(model.apply)(variables, x.numpy().transpose(0, 2, 3, 1))
    assert 0.5 < expected.std() < 2  # O(1) logits: a 1e-4 tolerance is meaningful
    # two libraries' float32 convolutions (different algorithms: every sum grouped otherwise) over up to
    # 50 layers of 3 x 3 x 512 = 4,608 terms: 50 x 2 x sqrt(4608) x u = 4e-4 at most relative
    # (helpers.reordered_sum_rtol); on O(1) logits 1e-4 + 1e-4 |x| holds with the errors' cancellation
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("option,depth", [("A", 20), ("B", 8)])
def test_cifar_resnet_logits_match(option, depth):
    torch.manual_seed(depth)
    net = CifarResNet((depth - 2) // 6, option)
    assert_same_logits(net, models.create("cifar", depth, option, 10), 32)


def test_scan_blocks_model_gets_the_stacked_layout():
    torch.manual_seed(1)
    net = CifarResNet(3, "A")
    model = models.create("cifar", 20, "A", 10, scan_blocks=True)
    assert_same_logits(net, model, 32)
    variables = models.load_torch_state_dict(model, net.state_dict())
    assert variables["params"]["stage2_scan"]["block"]["conv1"]["kernel"].shape == (2, 3, 3, 32, 32)


TORCHVISION = [(18, BasicBlock, (2, 2, 2, 2)), (50, Bottleneck, (3, 4, 6, 3))]


@pytest.mark.parametrize("depth,block,layers", TORCHVISION)
def test_torchvision_resnet_logits_match(depth, block, layers):
    torch.manual_seed(depth)
    net = TorchvisionResNet(block, layers, num_classes=100)
    model = models.create("imagenet", depth, "B", 100, stride_on="3x3")
    assert_same_logits(net, model, 64, batch=2)


def test_dataparallel_prefix_and_numpy_values_are_accepted():
    net = CifarResNet(1, "A")
    state = {f"module.{k}": v.numpy() for k, v in net.state_dict().items()}
    variables = models.load_torch_state_dict(models.create("cifar", 8, "A"), state)
    np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], net.linear.weight.detach().numpy().T)


def test_missing_key_is_named():
    state = CifarResNet(1, "B").state_dict()
    del state["layer2.0.shortcut.1.running_var"]
    message = "state_dict is missing 'layer2.0.shortcut.1.running_var'"
    with pytest.raises(ValueError, match=re.escape(message)):
        models.load_torch_state_dict(models.create("cifar", 8, "B"), state)


def test_unexpected_key_is_named():
    state = CifarResNet(1, "B").state_dict()  # option B weights into an option A model
    with pytest.raises(ValueError, match=re.escape("unexpected key 'layer2.0.shortcut.0.weight'")):
        models.load_torch_state_dict(models.create("cifar", 8, "A"), state)


def test_shape_mismatch_is_named():
    state = CifarResNet(1, "A").state_dict()
    state["layer1.0.conv2.weight"] = torch.zeros(16, 16, 5, 5)
    message = "key 'layer1.0.conv2.weight' has shape (16, 16, 5, 5); the model expects (16, 16, 3, 3)"
    with pytest.raises(ValueError, match=re.escape(message)):
        models.load_torch_state_dict(models.create("cifar", 8, "A"), state)
