"""The library refuses, in one line naming the value and what would be valid, what a new user hands it by mistake:
activations the probe cannot see, NaN/Inf data, an accuracy that is a fraction, a batch that does not fit the
model, a bad option under the name it was passed as; and it returns the kept model with its masks made permanent."""

import math

import pytest
import torch
from torch import nn

import nepenthe
from nepenthe.errors import ConfigError, NonFiniteInputError
from nepenthe.inputs import check_percent


class Net(nn.Module):
    def __init__(self, act=nn.ReLU, functional=False):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.act = act()
        self.fc = nn.Linear(4 * 8 * 8, 3)
        self.functional = functional

    def forward(self, x):
        z = self.conv(x)
        z = torch.relu(z) if self.functional else self.act(z)
        return self.fc(z.flatten(1))


def batches(n=3, fill=None, shape=(8, 1, 8, 8), dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        x = torch.randn(shape, generator=g).to(dtype)
        out.append((x, torch.zeros(shape[0], dtype=torch.long)))
    if fill is not None:
        out[1][0].view(-1)[5] = fill  # one scalar of one image of the second batch
    return out


def run(model, data=None, evaluate=lambda m: 80.0, train=lambda m, r: None, stop=None, **kwargs):
    return nepenthe.prune(model, train=train, evaluate=evaluate, probe_batches=data or batches(),
                          stop=stop or nepenthe.StopConfig(max_rounds=1), **kwargs)


@pytest.mark.parametrize("act", [nn.Tanh, nn.SiLU])
def test_a_model_without_a_rectifier_is_refused_naming_its_activations_and_the_supported_ones(act):
    with pytest.raises(ConfigError) as info:
        run(Net(act))
    assert str(info.value) == (f"Net has no supported rectifier module (ReLU, ReLU6, LeakyReLU, GELU): its "
                               f"activations are act ({act.__name__}); entropy-guided depth reduction needs "
                               f"rectifiers (units=[...] names them when discovery misses them)")


def test_a_rectifier_called_as_a_function_is_refused_naming_the_call():
    with pytest.raises(ConfigError, match=r"^Net calls rectifiers as functions, which the entropy probe cannot hook: "
                                          r"torch\.relu \(relu\); give each call site a module of its own"):
        run(Net(functional=True))


def test_a_non_rectifier_beside_real_units_warns_once_and_stays():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Sigmoid())
    with pytest.warns(UserWarning, match=r"^Sequential: 3 \(Sigmoid\) are not rectifiers"):
        units = nepenthe.model_units(model)
    assert [u.name for u in units] == ["1"]


@pytest.mark.parametrize("fill", [math.nan, math.inf])
def test_one_non_finite_value_in_the_probe_batches_stops_the_probe_with_one_line(fill):
    with pytest.raises(NonFiniteInputError) as info:
        run(Net(), data=batches(fill=fill))
    # one scalar of one image of the second of 3 batches
    assert str(info.value) == ("the input of activation 'act' held NaN or Inf in 1 of 3 probe batches: the probe "
                               "batches or the model's weights (a NaN training loss?) are not finite, so its entropy "
                               "is undefined")


def test_nan_training_data_never_passes_for_zero_entropy_units():
    def train_on_nan(model, round_index):  # what SGD on a NaN image does to the weights
        with torch.no_grad():
            model.conv.weight.fill_(math.nan)

    with pytest.raises(NonFiniteInputError, match=r"^the input of activation 'act' held NaN or Inf in 3 of 3 probe "):
        run(Net(), train=train_on_nan, setup=nepenthe.PruneSetup(train_dense=True))


def test_an_accuracy_given_as_a_fraction_is_refused_with_the_percent_it_meant():
    with pytest.raises(ConfigError) as info:
        run(Net(), evaluate=lambda m: 0.87)
    assert str(info.value) == ("evaluate() returned val_acc=0.87; it must be the validation top-1 in percent, above 1 "
                               "and at most 100 (0.87 looks like a fraction: return 87)")
    with pytest.raises(ConfigError, match=r"returned val_acc=None; it must be the validation top-1 in percent"):
        run(Net(), evaluate=lambda m: {"val_acc": None})
    assert check_percent(1.5) == 1.5 and check_percent(100) == 100.0
    for bad in (0.0, 1.0, 100.5, -3, math.nan, True):
        with pytest.raises(ConfigError):
            check_percent(bad)


def test_flat_images_and_a_wrong_dtype_name_the_batch_and_what_the_first_layer_takes():
    with pytest.raises(ConfigError, match=r"^a probe batch of shape \[8, 64\] torch.float32 does not fit Net; its first "
                                          r"layer conv \(Conv2d\) takes \[B, 1, H, W\] torch.float32 \(RuntimeError: "):
        run(Net(), data=batches(shape=(8, 64)))
    with pytest.raises(ConfigError, match=r"^a probe batch of shape \[8, 1, 8, 8\] torch.float64 does not fit Net; "
                                          r"its first layer conv \(Conv2d\) takes \[B, 1, H, W\] torch.float32"):
        run(Net(), data=batches(dtype=torch.float64))


def test_refusals_name_the_argument_as_the_library_caller_passed_it(tmp_path):
    with pytest.raises(ConfigError, match=r"^ratio=2.0 must lie strictly between 0 and 1"):
        nepenthe.create_method("nepenthe", ratio=2.0)
    with pytest.raises(ConfigError, match=r"^stop.max_drop=-1 must be >= 0$"):
        run(Net(), stop=nepenthe.StopConfig(max_drop=-1))
    with pytest.raises(ConfigError, match=r"^probe.zero_state='maybe' is not valid; choose one of off, on, drop$"):
        run(Net(), probe=nepenthe.ProbeSettings(zero_state="maybe"))
    with pytest.raises(ConfigError, match=r"^lambda_reg=-1 must be >= 0"):
        nepenthe.create_method("lacoot", lambda_reg=-1)
    in_dir = nepenthe.PruneSetup(run_dir=tmp_path)
    run(Net(), setup=in_dir, method=nepenthe.create_method("nepenthe", ratio=0.5))
    with pytest.raises(ConfigError, match=r"holds a run of another config \(ratio: 0.5 -> 0.3\); use another "
                                          r"setup.run_dir or resume=false"):
        run(Net(), setup=in_dir, method=nepenthe.create_method("nepenthe", ratio=0.3))


def test_the_kept_model_comes_back_with_plain_weights_that_hold_the_pruned_zeros():
    torch.manual_seed(0)
    model = Net()
    result = run(model, stop=nepenthe.StopConfig(max_rounds=2, max_drop=100))
    kept = result.model
    assert not any("weight_orig" in k or "weight_mask" in k for k in kept.state_dict())
    assert isinstance(kept.conv.weight, nn.Parameter)
    zeros = int((kept.conv.weight == 0).sum()) + int((kept.fc.weight == 0).sum())
    assert result.kept.sparsity > 0 and zeros == round(result.kept.sparsity * (36 + 768))
