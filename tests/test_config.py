import numpy as np
import pytest

from experiments import get_experiment
from recorder.config import ConfigError, RunConfig, apply_overrides, config_from_json
from recorder.schedule import parse_schedule, recorded_steps


def test_overrides_are_typed():
    c = apply_overrides(RunConfig(), ["learning_rate=0.01", "batch_size=32", "probes=3,1,4", "data_dir=none",
                                      "activation=relu"])
    assert c.learning_rate == 0.01 and c.batch_size == 32 and c.probes == (3, 1, 4) and c.data_dir is None
    assert c.activation == "relu"
    assert config_from_json(c.to_json()) == c


@pytest.mark.parametrize(
    "override, message",
    [
        ("lr=0.1", "unknown config key 'lr'; valid keys: model, activation"),
        ("activation=swish", "unknown activation 'swish'; expected one of: elu, gelu, identity, leaky_relu, relu"),
        ("model=resnet", "unknown model 'resnet'; expected one of: keras_fashion, learn_to_see, learn_to_see_strided, resnet8"),
        ("batch_size=big", "batch_size: expected a value of type int"),
        ("batch_size=0", "batch_size must be >= 1"),
        ("schedule=sometimes", "unknown schedule 'sometimes'; expected one of: every, every:K"),
        ("optimizer=lion", "unknown optimizer 'lion'; expected one of: adam, sgd"),
        ("batch_size", "not of the form key=value"),
    ],
)
def test_bad_overrides_name_the_valid_options(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        apply_overrides(RunConfig(), [override])


def test_unknown_experiment_lists_experiments():
    with pytest.raises(ConfigError, match="expected one of: learn_to_see, keras_fashion, strided, vgg_bn, resnet8, cifar10_vgg, tiny"):
        get_experiment("alexnet")


def test_reference_experiment_config():
    c = get_experiment("learn_to_see")
    assert (c.model, c.activation, c.batch_size, c.epochs, c.schedule) == ("learn_to_see", "tanh", 1024, 5, "every")


def test_schedules():
    np.testing.assert_array_equal(recorded_steps("every", 5), [0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(recorded_steps("every:4", 10), [0, 4, 8, 10])  # the last step always
    log = recorded_steps("log:50", 4685)
    assert log[0] == 0 and log[1] == 1 and log[-1] == 4685
    assert np.all(np.diff(log) > 0) and len(log) == 50
    assert len(recorded_steps("log:300", 4685)) == 300 and len(recorded_steps("log:300", 20)) == 21
    gaps = np.diff(log)
    assert gaps[:5].max() < gaps[-5:].min()  # dense early, sparse late
    for bad in ("every:0", "log:1", "every:x", "daily"):
        with pytest.raises(ValueError, match="expected one of"):
            parse_schedule(bad)
